"""Keeping this gateway's part of the sealed registry: its seal key, data keys, grants, re-sealing.

Theory of operation: one step, run every few seconds (and at once before a
pairing needs the key), reads ``/seal`` and ``/gateways`` and does the first
thing that is due, in this order:

1. SEAL KEY: the registry's record of this gateway lacks our X25519 seal key
   (a new home, a key file replaced): send ``SetSealKey``.
2. OPEN: there is no data key yet, or a rotation is due (a gateway that held
   the current key was removed), or we have waited ``patience_s`` for a grant
   of the current epoch and none came (no holder is online): generate a key
   and open the next epoch wrapped to every gateway with a seal key. Gateways
   race here; the chain lets exactly one opening per epoch through.
3. GRANT: for every epoch we hold, wrap it to each gateway with a seal key
   but no wrap of that epoch (a gateway that joined later, also by state
   sync, or one that replaced its seal key).
4. RE-SEAL: our own devices still sealed under an older epoch are sealed again
   under the current one (``reseal`` callback: the commissioner, which has
   their plaintext in this gateway's store). Rotation protects what is written
   after it; this moves our records across.

The keyring (:class:`~.sealbox.Keyring`) is rebuilt from each read; ``version``
changes whenever the set of keys held changes, so the replica reloads then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ...abci_app.codes import Code
from ...chain import ChainClient, CommitTimeout, TxRejected
from ...proto import registry_pb2 as pb
from . import sealbox
from .sealbox import Keyring

log = logging.getLogger(__name__)

PATIENCE_S = 60.0  # wait this long for a peer to grant the current epoch before opening a new one
RACES = (Code.STALE_EPOCH, Code.WRAP_EXISTS, Code.WRAPS_INCOMPLETE)  # another gateway got there first


class SealKeeper:
    def __init__(self, chain: ChainClient, key: Ed25519PrivateKey, gateway_id: str, seal_key: X25519PrivateKey,
                 patience_s: float = PATIENCE_S, clock: Callable[[], float] = time.monotonic,
                 reseal: Callable[[Keyring], Awaitable[int]] | None = None) -> None:
        self.chain, self.key, self.gateway_id, self.seal_key = chain, key, gateway_id, seal_key
        self.seal_pub = seal_key.public_key().public_bytes_raw()
        self.patience_s, self.clock, self.reseal = patience_s, clock, reseal
        self.ring = Keyring()
        self.version = 0
        self._waiting_since: tuple[int, float] | None = None  # (epoch, since) while we lack the current key
        self._lock = asyncio.Lock()  # the loop and a pairing may both step: one at a time

    async def refresh(self) -> Keyring:
        """Read /seal and rebuild the keyring (no tx)."""
        state = await self.chain.query_msg("/seal", pb.SealState)
        ring = Keyring.from_state(state, self.gateway_id, self.seal_key)
        if ring.keys.keys() != self.ring.keys.keys() or ring.current != self.ring.current:
            self.version += 1
        self.ring = ring
        return ring

    async def step(self) -> str:
        """Do the first due thing (see the module docstring); returns what was done ("" for nothing)."""
        async with self._lock:
            return await self._step()

    async def _step(self) -> str:
        gateways = {g.id: g for g in await self.chain.gateways()}
        me = gateways.get(self.gateway_id)
        if me is None:
            return ""  # not registered (yet): nothing to seal with
        if me.seal_pubkey != self.seal_pub:
            await self.chain.submit(self.key, pb.SetSealKey(x25519_pubkey=self.seal_pub))
            log.info("registered this gateway's seal key")
            return "seal_key"
        ring = await self.refresh()
        if self._should_open(ring):
            return await self._open(ring, gateways)
        granted = await self._grant(ring, gateways)
        if granted:
            return granted
        if self.reseal is not None and ring.ready:
            moved = await self.reseal(ring)
            if moved:
                return f"resealed {moved}"
        return ""

    def _should_open(self, ring: Keyring) -> bool:
        if ring.current == 0 or ring.rotation_due:
            return True
        if ring.ready:
            self._waiting_since = None
            return False
        if self._waiting_since is None or self._waiting_since[0] != ring.current:
            self._waiting_since = (ring.current, self.clock())
            return False
        return self.clock() - self._waiting_since[1] >= self.patience_s

    async def _open(self, ring: Keyring, gateways: dict[str, pb.GatewayRecord]) -> str:
        epoch = ring.current + 1
        key = sealbox.new_data_key()
        wraps = _wraps(key, epoch, [(gid, g.seal_pubkey) for gid, g in sorted(gateways.items()) if g.seal_pubkey])
        msg = pb.PutDataKey(epoch=epoch, key_check=sealbox.key_check(key), wraps=wraps)
        if not await self._submit(msg):
            return ""
        self._waiting_since = None
        await self.refresh()
        log.info("opened data key epoch %d for %d gateways", epoch, len(wraps))
        return f"opened {epoch}"

    async def _grant(self, ring: Keyring, gateways: dict[str, pb.GatewayRecord]) -> str:
        state = await self.chain.query_msg("/seal", pb.SealState)
        held = {(w.epoch, w.gateway_id) for w in state.wraps}
        for epoch in sorted(ring.keys):
            lacking = [gid for gid, g in sorted(gateways.items()) if g.seal_pubkey and (epoch, gid) not in held]
            if not lacking:
                continue
            wraps = _wraps(ring.keys[epoch], epoch, [(gid, gateways[gid].seal_pubkey) for gid in lacking])
            if not wraps:
                continue
            if await self._submit(pb.PutDataKey(epoch=epoch, wraps=wraps)):
                log.info("granted epoch %d to %s", epoch, ", ".join(lacking))
                return f"granted {epoch}"
        return ""

    async def _submit(self, msg: pb.PutDataKey) -> bool:
        """Submit; False when another gateway won the race (the chain refused ours).

        A race lost after CheckTx shows as a commit timeout: the winner's block made our
        pending tx invalid and the node dropped it at recheck. The next step reads the
        state again either way (a late commit of ours is in /seal, wrapped to us), so
        nothing is lost by stepping on.
        """
        try:
            await self.chain.submit(self.key, msg)
            return True
        except TxRejected as exc:
            if exc.code in RACES:
                log.info("data key tx lost a race: %s", exc.log)
                return False
            raise
        except CommitTimeout as exc:
            log.info("data key tx not committed (lost a race after CheckTx?): %s", exc)
            return False

    async def ready(self, timeout: float = 30.0, poll_s: float = 0.2) -> Keyring:
        """Step until this gateway holds the current data key (pairing needs it); raises TimeoutError."""
        deadline = self.clock() + timeout
        while True:
            if self.ring.ready:
                return self.ring
            await self.step()
            if self.ring.ready:
                return self.ring
            if self.clock() >= deadline:
                raise TimeoutError(f"no data key for epoch {self.ring.current} was granted to this gateway")
            await asyncio.sleep(poll_s)


def _wraps(key: bytes, epoch: int, holders: list[tuple[str, bytes]]) -> list[pb.KeyWrap]:
    """The data key wrapped to each (gateway id, seal key); a key no wrap can be made to (one
    of small order that a byzantine block let in) is passed over with a warning, so one bad
    seal key cannot stop the keeper from opening or granting to everyone else."""
    out = []
    for gid, seal_pubkey in holders:
        try:
            out.append(sealbox.wrap_key(key, epoch, gid, seal_pubkey))
        except ValueError as exc:
            log.warning("no data key wrap for gateway %s (its seal key: %s)", gid, exc)
    return out
