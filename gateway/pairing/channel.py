"""Commissioning: carrying a device's root token to the gateway, once.

Protocol (proto/gateway.proto, service Commissioning)::

    tool -> Begin {client_x25519}
         <- PairOffer {gateway_x25519, gateway_pubkey, sig, gateway_id, session, chain_id}
            sig = Ed25519(gateway key, "edgistry/pair/v1" || client_x25519 || gateway_x25519)
    tool -> Complete {session, nonce, AES-GCM(k, PairPayload)}
         <- PairSealed {nonce, AES-GCM(k, PairResult)}

    k = HKDF-SHA256(X25519 shared, salt = SHA-256(transcript || gateway_pubkey || session),
                    info = "edgistry/pair/v1 key")

The tool checks the signature and that ``gateway_id`` is derived from the key
(and, given the registry, that the key is registered there); the gateway
checks the *one-time commissioning code* inside the sealed payload. The code
is printed when the gateway starts and kept in ``<home>/commission.code``
(0600); a successful pairing consumes it and writes a new one, and five
wrong codes in a row also replace it (no online guessing). Unpairing needs no
code: the sealed root token itself proves the caller holds the device.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...abci_app.txs import gateway_id_for
from ...config import write_secret_file
from ..errors import BadRequest, Precondition, Unauthorized
from ...proto import gateway_pb2 as gw

PAIR_DOMAIN = b"edgistry/pair/v1"
SESSION_TTL_S = 120  # a commissioning exchange takes seconds; stale offers are forgotten
MAX_SESSIONS = 64  # open offers kept (bounded memory; the oldest is dropped)
MAX_WRONG_CODES = 5
CODE_GROUPS, CODE_GROUP_LEN = 4, 4  # 16 base32 characters: 80 bits
AAD_PAYLOAD, AAD_RESULT = b"edgistry/pair/v1 payload", b"edgistry/pair/v1 result"

log = logging.getLogger(__name__)


def transcript(client_x: bytes, gateway_x: bytes) -> bytes:
    return PAIR_DOMAIN + client_x + gateway_x


def pair_key(shared: bytes, client_x: bytes, gateway_x: bytes, gateway_pubkey: bytes, session: str) -> bytes:
    salt = hashlib.sha256(transcript(client_x, gateway_x) + gateway_pubkey + session.encode()).digest()
    return HKDF(hashes.SHA256(), 32, salt, b"edgistry/pair/v1 key").derive(shared)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    nonce = os.urandom(12)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise Unauthorized("commissioning message does not decrypt (tampered, or another session)") from exc


def normalise_code(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def new_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(10)).decode()  # 16 characters
    return "-".join(raw[i:i + CODE_GROUP_LEN] for i in range(0, CODE_GROUPS * CODE_GROUP_LEN, CODE_GROUP_LEN))


def code_announcement(code: str, path: Path, first: bool = False) -> str:
    """The line a gateway prints for a new commissioning code. The code itself only when
    stdout is a terminal: printed into a log file or a journal it would be kept and read
    by others (a cluster's logs), and it pairs any device; the file is its owner's (0600)."""
    what = "commissioning code" if first else "next commissioning code"
    if sys.stdout.isatty():
        return f"{what}: {code} (one-time; also in {path})"
    return f"{what}: in {path} (one-time; shown only on a terminal)"


class CommissionCode:
    """The current one-time code, kept in a 0600 file in the gateway's home."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wrong = 0
        # who hears of each new code (the running command prints it as a plain line)
        self.on_rotate: Callable[[str], None] | None = None
        try:
            self.code = path.read_text().strip()
        except FileNotFoundError:
            self.code = ""
        if not self.code:
            self.rotate(quiet=True)  # the gateway announces it at start

    def rotate(self, quiet: bool = False) -> str:
        self.code = new_code()
        write_secret_file(self.path, (self.code + "\n").encode())
        self.wrong = 0
        if not quiet:
            if self.on_rotate is not None:
                self.on_rotate(self.code)
            else:
                log.info("next commissioning code in %s", self.path)  # never the code: logs are kept
        return self.code

    def check(self, given: str) -> None:
        if hmac.compare_digest(normalise_code(given).encode(), normalise_code(self.code).encode()):
            self.wrong = 0
            return
        self.wrong += 1
        if self.wrong >= MAX_WRONG_CODES:
            log.warning("%d wrong commissioning codes: replacing the code", self.wrong)
            self.rotate()
        raise Unauthorized("wrong commissioning code (see the gateway's log or <home>/commission.code)")


@dataclass
class _Session:
    private: X25519PrivateKey
    client_x: bytes
    gateway_x: bytes
    created: float


class Offers:
    """Server side of Begin: ephemeral keys per session, single use, bounded."""

    def __init__(self, key: Ed25519PrivateKey, chain_id: str, tls: tuple[bytes, bytes] | None = None) -> None:
        self.key = key
        self.tls = tls  # (certificate DER, its Ed25519 binding): the offer tells the tool what to pin
        self.pubkey = key.public_key().public_bytes_raw()
        self.gateway_id = gateway_id_for(self.pubkey)
        self.chain_id = chain_id
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def begin(self, msg: gw.PairBegin) -> gw.PairOffer:
        if len(msg.client_x25519) != 32:
            raise BadRequest("client_x25519 must be 32 bytes")
        now = time.monotonic()
        while self._sessions and (len(self._sessions) >= MAX_SESSIONS
                                  or now - next(iter(self._sessions.values())).created > SESSION_TTL_S):
            self._sessions.popitem(last=False)
        private = X25519PrivateKey.generate()
        gx = private.public_key().public_bytes_raw()
        session = secrets.token_hex(16)
        self._sessions[session] = _Session(private, msg.client_x25519, gx, now)
        sig = self.key.sign(transcript(msg.client_x25519, gx))
        cert, binding = self.tls or (b"", b"")
        return gw.PairOffer(gateway_x25519=gx, gateway_pubkey=self.pubkey, signature=sig,
                            gateway_id=self.gateway_id, session=session, chain_id=self.chain_id,
                            tls_cert=cert, tls_cert_signature=binding)

    def open(self, msg: gw.PairComplete) -> tuple[gw.PairPayload, bytes]:
        """Decrypt a Complete; returns the payload and the session key (to seal the answer)."""
        s = self._sessions.pop(msg.session, None)
        if s is None or time.monotonic() - s.created > SESSION_TTL_S:
            raise Precondition("unknown or expired commissioning session; start again")
        shared = s.private.exchange(X25519PublicKey.from_public_bytes(s.client_x))
        key = pair_key(shared, s.client_x, s.gateway_x, self.pubkey, msg.session)
        payload = gw.PairPayload.FromString(unseal(key, msg.nonce, msg.ciphertext, AAD_PAYLOAD))
        return payload, key


# ---- the commissioning tool's side ----


class ToolSession:
    """The pairing tool's half: make Begin, check the offer, seal the payload, open the result."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.client_x = self._private.public_key().public_bytes_raw()
        self.offer: gw.PairOffer | None = None
        self._key = b""

    def begin(self) -> gw.PairBegin:
        return gw.PairBegin(client_x25519=self.client_x)

    def accept(self, offer: gw.PairOffer, expect_gateway: str | None = None) -> None:
        """Check the offer's signature and key-derived id; raise Unauthorized otherwise."""
        try:
            Ed25519PublicKey.from_public_bytes(offer.gateway_pubkey).verify(
                offer.signature, transcript(self.client_x, offer.gateway_x25519))
        except (InvalidSignature, ValueError) as exc:
            raise Unauthorized("the gateway's offer is not signed by the key it presents") from exc
        if offer.gateway_id != gateway_id_for(offer.gateway_pubkey):
            raise Unauthorized("the gateway id does not match its key")
        if expect_gateway and offer.gateway_id != expect_gateway:
            raise Unauthorized(f"expected gateway {expect_gateway}, this is {offer.gateway_id}")
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(offer.gateway_x25519))
        self._key = pair_key(shared, self.client_x, offer.gateway_x25519, offer.gateway_pubkey, offer.session)
        self.offer = offer

    def complete(self, payload: gw.PairPayload) -> gw.PairComplete:
        nonce, ct = seal(self._key, payload.SerializeToString(), AAD_PAYLOAD)
        return gw.PairComplete(session=self.offer.session, nonce=nonce, ciphertext=ct)

    def result(self, sealed: gw.PairSealed) -> gw.PairResult:
        return gw.PairResult.FromString(unseal(self._key, sealed.nonce, sealed.ciphertext, AAD_RESULT))
