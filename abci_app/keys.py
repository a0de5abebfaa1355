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
    k/<be32 epoch>              DataKeyEpoch   (sealed registry: abci_app/sealing.py)
    w/<be32 epoch><gateway_id>  KeyWrap        (a data key wrapped to one gateway)
    m/seal_epoch, m/seal_rotate the current epoch (be32); b"1" while a rotation is due
    c/<gateway_id><be32 slot>   ManifestRecord (a slot of a gateway's sealed catalog)
    m/manifest_ref_height       -> be64 (absent: never): devices name a catalog slot from it on

Indexes (derived from primary records; not hashed, rebuilt with them):

    gk/<pubkey32>               -> gateway_id   (who signed this tx?)
    dg/<gateway_id><ps16>       -> b""          (devices by owning gateway)
    rx/<be64 expiry><tag32>     -> b""          (revocations by expiry, for pruning)
    x/block_time                -> be64         (last block time, for CheckTx)

There is no index by service type or cell: those fields are sealed (only
gateways can read them), so such queries are answered by the gateways'
discovery, never by the chain.
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
DATA_KEY = b"k/"
WRAP = b"w/"
MANIFEST = b"c/"
SEAL_EPOCH = META + b"seal_epoch"
SEAL_ROTATE = META + b"seal_rotate"
GATEWAY_BY_KEY = b"gk/"
DEVICE_BY_GATEWAY = b"dg/"
REVOCATION_BY_EXPIRY = b"rx/"
ED25519_V2_HEIGHT = META + b"ed25519_v2_height"  # from genesis; see ed25519_rule
REVOCATION_HASH_HEIGHT = META + b"revocation_hash_height"  # from genesis; see revocation_rule
LTHASH_V2_HEIGHT = META + b"lthash_v2_height"  # from genesis; see lthash
MANIFEST_REF_HEIGHT = META + b"manifest_ref_height"  # from genesis; see sealing
BLOCK_TIME = b"x/block_time"  # last block time (be64 seconds); derived, not hashed

HASHED_PREFIXES = (META, ADMIN, GATEWAY, DEVICE, REVOCATION, NONCE, VALIDATOR, DATA_KEY, WRAP, MANIFEST)

PSEUDONYM_LEN = 16
GATEWAY_ID_LEN = 32  # hex of the first 16 bytes of sha256(pubkey)

_BE64 = struct.Struct(">Q")
_BE32 = struct.Struct(">I")
_DIGITS = (1 << 45) - 1


def is_hashed(key: bytes) -> bool:
    return key.startswith(HASHED_PREFIXES)


def be64(n: int) -> bytes:
    return _BE64.pack(n)


def from_be64(b: bytes) -> int:
    return _BE64.unpack(b)[0]


def be32(n: int) -> bytes:
    return _BE32.pack(n)


def from_be32(b: bytes) -> int:
    return _BE32.unpack(b)[0]


def h3_resolution(cell: int) -> int:
    return (cell >> 52) & 0xF


def h3_path(cell: int) -> bytes:
    """Base cell, then one ASCII octal digit per resolution digit (prefix-ordered; benchmarks)."""
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


def device_by_gateway(gateway_id: str, pseudonym: bytes = b"") -> bytes:
    return DEVICE_BY_GATEWAY + gateway_id.encode() + pseudonym


def manifest(gateway_id: str, slot: int | None = None) -> bytes:
    """A catalog slot's key; without ``slot``, the prefix of the gateway's whole catalog."""
    return MANIFEST + gateway_id.encode() + (b"" if slot is None else _BE32.pack(slot))


def revocation(tag: bytes) -> bytes:
    return REVOCATION + tag


def revocation_by_expiry(expires_at: int, tag: bytes = b"") -> bytes:
    return REVOCATION_BY_EXPIRY + be64(max(expires_at, 0)) + tag


def nonce(signer: bytes) -> bytes:
    return NONCE + signer


def validator(pubkey: bytes) -> bytes:
    return VALIDATOR + pubkey


def data_key(epoch: int) -> bytes:
    return DATA_KEY + be32(epoch)


def wrap(epoch: int, gateway_id: str) -> bytes:
    return WRAP + be32(epoch) + gateway_id.encode()
