"""Which form a RevokeToken takes at a block height: tags, then only their hashes.

A CAPLets tag is the key that derives the next frame: a revoked tag on chain
would let anyone who reads a block mint children of the very token it revokes
(and a device that has not yet heard of the revocation would accept them).
So from the genesis activation height ``revocation_hash_height`` on, a
revocation names only the tag's one-way hash (``tag_hash``:
firmware/caplets/cap_crypto.revocation_hash, computed by whoever revokes),
and a raw ``tag`` is refused.

Blocks below that height keep the rule they were made under, so replaying an
older chain gives the same results: a raw ``tag`` is accepted, and a
``tag_hash`` is refused as malformed, as it was when the field did not exist
(its unknown field failed the canonical decoding, before the nonce, whatever
the other fields held: so ``txs.validate_basic`` leaves a ``tag_hash`` tx
entirely to this module).

The activation height follows the same mechanism as the Ed25519 rule's: it
comes from genesis (``Genesis.revocation_hash_height``; a new chain hashes from
height 1; a genesis without the key means "never") and is written to the
state only when set (``keys.REVOCATION_HASH_HEIGHT``), which keeps the app
hashes of older chains unchanged. The check runs in ``state.execute_tx``
before authentication, so a refused form never consumes a nonce.
"""

from __future__ import annotations

import hashlib

from . import keys
from .codes import Code, TxError
from .overlay import Reader
from ..proto import registry_pb2 as pb

DEFAULT_REVOCATION_HASH_HEIGHT = 1  # new chains publish only hashes from their first block
TAG_SIZE = 32
# The same domain and hash as firmware/caplets/cap_crypto.revocation_hash (the
# state machine imports no firmware; a test holds the two equal). The chain
# itself never hashes a tag it is sent: only an export hashes old records.
REVOCATION_DOMAIN = b"edgistry/revoked-tag/v1\0"


def revocation_hash(tag: bytes) -> bytes:
    """The one-way hash under which ``tag`` is revoked."""
    return hashlib.sha256(REVOCATION_DOMAIN + tag).digest()


def read_revocation_hash_height(reader: Reader) -> int | None:
    """The activation height recorded in the state (None: never)."""
    raw = reader.get(keys.REVOCATION_HASH_HEIGHT)
    return keys.from_be64(raw) if raw else None


def hashes_required(height: int, activation: int | None) -> bool:
    """Whether block ``height`` takes only tag hashes."""
    return activation is not None and height >= activation


def check_no_raw_tag(msg: pb.RevokeToken, height: int, activation: int | None) -> None:
    """Raise TxError when ``msg`` carries a raw tag and block ``height`` takes only hashes:
    the part of :func:`check_form` that keeps a tag's bytes out of every block (the
    proposal checks and a batch's admission run it; see batch.check_admissible)."""
    if msg.tag and hashes_required(height, activation):
        raise TxError(Code.INVALID_FIELD, "a raw tag is never put on chain (it derives children of the "
                                          "token): send tag_hash, the tag's revocation hash")


def check_form(msg: pb.RevokeToken, height: int, activation: int | None) -> None:
    """Raise TxError unless ``msg`` has the form block ``height`` accepts."""
    if hashes_required(height, activation):
        check_no_raw_tag(msg, height, activation)
        if len(msg.tag_hash) != TAG_SIZE:
            raise TxError(Code.INVALID_FIELD, "tag_hash is 32 bytes")
        if msg.expires_at <= 0:
            raise TxError(Code.INVALID_FIELD, "a revocation needs a positive expiry")
    elif msg.tag_hash:
        raise TxError(Code.MALFORMED_TX, "tag_hash is not accepted below the revocation hash activation height")


def revoked_key(msg: pb.RevokeToken | pb.RevocationRecord) -> bytes:
    """What a revocation is keyed by on chain: its hash, or (older blocks) its tag."""
    return msg.tag_hash or msg.tag
