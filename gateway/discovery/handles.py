"""Opaque discovery handles and page cursors: AEAD under a gateway key (pure).

A handle is ``base64url(version | nonce12 | ChaCha20-Poly1305(key, nonce, body, aad))``
with ``body = expiry_ms:be64 | cell:be64 | pseudonym16 | service type (utf-8)`` and
``aad = purpose | gateway id | client id``. Hence:

* unlinkable: a fresh random nonce per handle, so the same device gives unrelated
  strings in every answer, to every client;
* resolvable only at the issuing gateway (the key is derived from its secret, and
  its id is authenticated) and only by the same client (the client id is
  authenticated data: another client's open fails exactly like a forgery);
* expiring: the expiry is inside the authenticated body.

Every failure raises :class:`BadHandle` with one message, so a caller cannot
tell a forged handle from another client's or another gateway's. Page cursors
use the same construction with another purpose byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VERSION = 1
NONCE_LEN = 12
PSEUDONYM_LEN = 16
MAX_TYPE_LEN = 64  # service types are short names; bounds a handle's size
PURPOSE_HANDLE = b"H"
PURPOSE_CURSOR = b"C"
KEY_INFO = b"edgistry/discovery-handle/v1"
_HEAD = struct.Struct(">QQ")


class BadHandle(Exception):
    """The handle or cursor is invalid, expired, or not this client's at this gateway."""


@dataclass(frozen=True)
class HandleClaims:
    """What an opened handle names (never shown to a client)."""

    pseudonym: bytes
    cell: int
    service_type: str
    expires_at_ms: int


def derive_key(gateway_secret: bytes, info: bytes = KEY_INFO) -> bytes:
    """A 32-byte AEAD key for handles, derived from the gateway's HMAC secret."""
    return hmac.new(gateway_secret, info, hashlib.sha256).digest()


def client_id_of(*parts: bytes) -> bytes:
    """A 16-byte client id from its token identity (name, first chain tag)."""
    h = hashlib.sha256(b"edgistry/client-id/v1")
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.digest()[:16]


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadHandle("invalid handle") from exc


class HandleCodec:
    """Seals and opens handles and cursors for one gateway."""

    def __init__(self, key: bytes, gateway_id: str) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._gid = gateway_id.encode()
        self._aads: dict[bytes, bytes] = {}

    def _aad(self, purpose: bytes, client_id: bytes) -> bytes:
        key = purpose + client_id
        aad = self._aads.get(key)
        if aad is None:
            if len(self._aads) > 4096:
                self._aads.clear()
            aad = self._aads[key] = purpose + len(self._gid).to_bytes(1, "big") + self._gid + client_id
        return aad

    def _seal(self, purpose: bytes, client_id: bytes, body: bytes, nonce: bytes | None) -> str:
        nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
        ct = self._aead.encrypt(nonce, body, self._aad(purpose, client_id))
        return _b64(bytes((VERSION,)) + nonce + ct)

    def _open(self, purpose: bytes, client_id: bytes, text: str) -> bytes:
        if not isinstance(text, str) or len(text) > 512:
            raise BadHandle("invalid handle")
        raw = _unb64(text)
        if len(raw) < 1 + NONCE_LEN + 16 or raw[0] != VERSION:
            raise BadHandle("invalid handle")
        try:
            return self._aead.decrypt(raw[1:1 + NONCE_LEN], raw[1 + NONCE_LEN:], self._aad(purpose, client_id))
        except InvalidTag as exc:
            raise BadHandle("invalid handle") from exc

    def mint(self, client_id: bytes, pseudonym: bytes, cell: int, service_type: str,
             expires_at_ms: int, nonce: bytes | None = None) -> str:
        """A fresh handle for ``client_id`` naming ``pseudonym`` (random nonce unless given)."""
        body = _HEAD.pack(expires_at_ms, cell) + pseudonym + service_type.encode()[:MAX_TYPE_LEN]
        return self._seal(PURPOSE_HANDLE, client_id, body, nonce)

    def open(self, client_id: bytes, handle: str, now_ms: int) -> HandleClaims:
        """The claims of a handle this gateway issued to this client; raises BadHandle."""
        body = self._open(PURPOSE_HANDLE, client_id, handle)
        if len(body) < _HEAD.size + PSEUDONYM_LEN:
            raise BadHandle("invalid handle")
        expires, cell = _HEAD.unpack_from(body)
        if now_ms >= expires:
            raise BadHandle("invalid handle")
        ps = body[_HEAD.size:_HEAD.size + PSEUDONYM_LEN]
        return HandleClaims(ps, cell, body[_HEAD.size + PSEUDONYM_LEN:].decode(errors="replace"), expires)

    def seal_cursor(self, client_id: bytes, payload: bytes) -> str:
        return self._seal(PURPOSE_CURSOR, client_id, payload, None)

    def open_cursor(self, client_id: bytes, cursor: str) -> bytes:
        return self._open(PURPOSE_CURSOR, client_id, cursor)
