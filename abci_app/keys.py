"""Store keys of the registry: every prefix, in one place.

Primary records (hashed into the app hash):

    m/<name>                    chain metadata: m/chain_id -> utf-8,
                                m/ed25519_v2_height -> be64 (absent: never)
                                m/revocation_hash_height -> be64 (absent: never)
    a/<pubkey32>                genesis admin                      -> b"1"
    g/<gateway_id>              GatewayRecord
    d/<pseudonym16>             DeviceRecord
    r/<hash32>                  RevocationRecord (r/<tag32> below revocation_hash_height)
    n/<signer32>                last nonce                          -> be64
    v/<pubkey32>                ValidatorRecord

Indexes (derived from primary records; not hashed, rebuilt with them):

    gk/<pubkey32>               -> gateway_id   (who signed this tx?)
    dc/<type>\\0<h3path><ps16>   -> b""          (devices by service type and cell)
    dg/<gateway_id><ps16>       -> b""          (devices by owning gateway)
    rx/<be64 expiry><tag32>     -> b""          (revocations by expiry, for pruning)
    x/block_time                -> be64         (last block time, for CheckTx)

``h3path`` is an H3 cell written as its base cell and one byte per resolution
digit (ASCII octal), so every descendant of a cell shares the cell's path as a prefix: one
prefix scan answers "devices of type T anywhere in cell C" at any resolution.
"""

from __future__ import annotations

import struct

META = b"m/"
ADMIN = b"a/"
GATEWAY = b"g/"
DEVICE = b"d/"
REVOCATION = b"r/"
NONCE = b"n/"
VALIDATOR = b"v/"
GATEWAY_BY_KEY = b"gk/"
DEVICE_BY_CELL = b"dc/"
DEVICE_BY_GATEWAY = b"dg/"
REVOCATION_BY_EXPIRY = b"rx/"
ED25519_V2_HEIGHT = META + b"ed25519_v2_height"  # from genesis; see ed25519_rule
REVOCATION_HASH_HEIGHT = META + b"revocation_hash_height"  # from genesis; see revocation_rule
BLOCK_TIME = b"x/block_time"  # last block time (be64 seconds); derived, not hashed

HASHED_PREFIXES = (META, ADMIN, GATEWAY, DEVICE, REVOCATION, NONCE, VALIDATOR)

PSEUDONYM_LEN = 16
GATEWAY_ID_LEN = 32  # hex of the first 16 bytes of sha256(pubkey)

_BE64 = struct.Struct(">Q")
_DIGITS = (1 << 45) - 1


def is_hashed(key: bytes) -> bool:
    return key.startswith(HASHED_PREFIXES)


def be64(n: int) -> bytes:
    return _BE64.pack(n)


def from_be64(b: bytes) -> int:
    return _BE64.unpack(b)[0]


def h3_resolution(cell: int) -> int:
    return (cell >> 52) & 0xF


def h3_path(cell: int) -> bytes:
    """Base cell, then one ASCII octal digit per resolution digit (prefix-ordered)."""
    res = (cell >> 52) & 0xF
    # the 15 resolution digits are the low 45 bits: exactly 15 octal digits
    return bytes(((cell >> 45) & 0x7F,)) + f"{cell & _DIGITS:015o}"[:res].encode()


def meta(name: str) -> bytes:
    return META + name.encode()


def admin(pubkey: bytes) -> bytes:
    return ADMIN + pubkey


def gateway(gateway_id: str) -> bytes:
    return GATEWAY + gateway_id.encode()


def gateway_by_key(pubkey: bytes) -> bytes:
    return GATEWAY_BY_KEY + pubkey


def device(pseudonym: bytes) -> bytes:
    return DEVICE + pseudonym


def device_by_cell(service_type: str, cell: int, pseudonym: bytes) -> bytes:
    return device_by_cell_prefix(service_type, cell) + pseudonym


def device_by_cell_keys(service_types: list[str], cell: int, pseudonym: bytes) -> list[bytes]:
    """device_by_cell for each of a device's service types (the cell path computed once)."""
    where = b"\0" + h3_path(cell) + pseudonym
    return [DEVICE_BY_CELL + t.encode() + where for t in service_types]


def device_by_cell_prefix(service_type: str, cell: int | None) -> bytes:
    prefix = DEVICE_BY_CELL + service_type.encode() + b"\0"
    return prefix if cell is None else prefix + h3_path(cell)


def device_by_gateway(gateway_id: str, pseudonym: bytes = b"") -> bytes:
    return DEVICE_BY_GATEWAY + gateway_id.encode() + pseudonym


def revocation(tag: bytes) -> bytes:
    return REVOCATION + tag


def revocation_by_expiry(expires_at: int, tag: bytes = b"") -> bytes:
    return REVOCATION_BY_EXPIRY + be64(max(expires_at, 0)) + tag


def nonce(signer: bytes) -> bytes:
    return NONCE + signer


def validator(pubkey: bytes) -> bytes:
    return VALIDATOR + pubkey
