"""Pre-built batch txs of the cluster benchmark's batched registry row, with a fixed operation mix.

Every batch is UNITS_PER_BATCH units of the same ten operations (MIX), all
signed by one gateway key with nonces 1, 2, 3, ... in order:

* 5 RegisterDevice   -- new devices (sealed fields naming their manifest's catalog slot, ~120 B each)
* 2 UpdateDevice     -- re-sealed fields of devices of the previous batch
* 1 ReportLiveness   -- one entry, a device of the previous batch
* 1 UnregisterDevice -- a device of the previous batch (one not updated or reported)
* 1 RevokeToken      -- a new tag hash, expiring in an hour

and every batch opens with one PutManifest (~1.1 KB): the first writes the slot
its devices name, later ones are cover writes of another slot. A gateway writes
at most one slot per second (gateway/discovery/catalog.py) and only in a batch
with a device operation, so one in every batch is the most its catalog costs.

(the first batch's updates, liveness and unregistration target its own
registrations, which precede them in the batch; it unregisters another one of
them than later batches do, so that batch 2 finds its target). Every operation is valid when
its batch runs after the previous one, so a committed operation with code 0 is a
registry write, and the benchmark counts only those.
"""

from __future__ import annotations

import hashlib
import time

import h3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench_util import sealed_device, sealed_manifest
from edgistry.abci_app import txs as registry_txs
from edgistry.abci_app.batch import op_of
from edgistry.abci_app.revocation_rule import revocation_hash
from edgistry.proto import registry_pb2 as pb

MIX = {"register_device": 5, "update_device": 2, "report_liveness": 1, "unregister_device": 1, "revoke_token": 1}
UNIT = sum(MIX.values())
UNITS_PER_BATCH = 7  # 70 operations (+ the slot write), ~8 KB: as many operations as batches of inline fields held
SLOT = 0  # the catalog slot the benchmark's one kind of device names
LEAD_OPS = 1  # each batch's leading catalog slot write (not an operation of the mix)


def _fields(k: int, n: int, version: int) -> pb.DeviceFields:
    cell = h3.str_to_int(h3.latlng_to_cell(30 + (n % 3000) / 100, (k % 300) + (n // 3000) / 100, 7))
    return pb.DeviceFields(services=[pb.ServiceDescriptor(type="meter", methods=[pb.ServiceMethod(name="read")])],
                           cell=cell, policy=pb.PrivacyPolicy(resolution=7, k=1), duty_cycle_s=60 + version)


def _pseudonym(k: int, j: int, u: int, i: int) -> bytes:
    return hashlib.sha256(f"{k}/{j}/{u}/{i}".encode()).digest()[:16]


def batch_ops(k: int, j: int, now: int, gateway_id: str) -> list[pb.BatchOp]:
    """Batch ``j`` (1-based) of submitter ``k``: a catalog slot write, then UNITS_PER_BATCH units of MIX."""
    target = j - 1 if j > 1 else j
    bucket = now // 300 * 300
    slot = SLOT if j == 1 else 1 + j % 31
    services = _fields(k, 0, 0).services if slot == SLOT else []
    ops = [op_of(sealed_manifest(gateway_id, slot, services, salt=f"{j}".encode()))]
    for u in range(UNITS_PER_BATCH):
        regs = [_pseudonym(k, j, u, i) for i in range(5)]
        old = [_pseudonym(k, target, u, i) for i in range(5)]
        ops += [op_of(sealed_device(pb.RegisterDevice, p, _fields(k, j * 100 + u * 5 + i, 0)))
                for i, p in enumerate(regs)]
        ops += [op_of(sealed_device(pb.UpdateDevice, old[i], _fields(k, j * 100 + u * 5 + i, 1))) for i in (0, 1)]
        ops.append(op_of(pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=old[2], last_seen=bucket)])))
        # batch 1 targets its own registrations: it unregisters the 5th, so batch 2 can unregister the 4th
        ops.append(op_of(pb.UnregisterDevice(pseudonym=old[3] if j > 1 else old[4])))
        ops.append(op_of(pb.RevokeToken(tag_hash=revocation_hash(hashlib.sha256(f"t{k}/{j}/{u}".encode()).digest()),
                                        expires_at=now + 3600)))
    return ops


def batch_load(keys: list[Ed25519PrivateKey], batches: int, chain: str) -> list[list[bytes]]:
    """``batches`` signed batch txs per key, in nonce order."""
    now = int(time.time())
    out = []
    for k, key in enumerate(keys):
        row = []
        for j in range(1, batches + 1):
            gid = registry_txs.gateway_id_for(key.public_key().public_bytes_raw())
            tx = registry_txs.sign_tx(key, chain, j, pb.Batch(ops=batch_ops(k, j, now, gid)))
            assert len(tx) <= registry_txs.MAX_TX_BYTES, len(tx)
            row.append(tx)
        out.append(row)
    return out


def mix_statement() -> str:
    return (f"batches of {UNITS_PER_BATCH * UNIT} ops, per 10: " + ", ".join(f"{n} {kind}" for kind, n in MIX.items())
            + " (updates/liveness/unregister on devices of the previous batch), each batch led by one "
            "catalog slot write (PutManifest, not counted as an operation)")
