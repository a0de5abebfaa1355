"""X25519 for the link's forward secrecy, from the ``cryptography`` package (CPython only).

The link's sans-I/O sessions take an X25519 *provider* (``keypair()``,
``shared(priv, peer_public)``) or None; a board has none (its HELLO offers no key:
the absence is negotiated in the open, see link_device). This module is the
CPython provider the gateway and ``edgistry device run`` pass in; a board does
not ship it.
"""


class _X25519:
    """X25519 via the ``cryptography`` package (CPython only)."""

    def __init__(self, priv_cls, pub_cls, encoding, fmt):
        self._priv = priv_cls
        self._pub = pub_cls
        self._raw = (encoding.Raw, fmt.Raw)

    def keypair(self):
        """A fresh ephemeral key: (private object, 32-byte public key)."""
        priv = self._priv.generate()
        return priv, priv.public_key().public_bytes(*self._raw)

    def shared(self, priv, peer_public):
        """The shared secret; raises ValueError for a bad or low-order key."""
        if len(peer_public) != 32:
            raise ValueError("an X25519 public key is 32 bytes")
        return priv.exchange(self._pub.from_public_bytes(peer_public))


def x25519():
    """An X25519 provider, or None where ``cryptography`` is unavailable."""
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import (X25519PrivateKey,
                                                                      X25519PublicKey)
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        return None
    return _X25519(X25519PrivateKey, X25519PublicKey, Encoding, PublicFormat)
