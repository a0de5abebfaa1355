"""Pairing, re-pairing and unpairing a device (the domain side of Commissioning).

Pairing: check the one-time code, read the root token and manifest, reduce
the location to the coarse cell of the device's policy (the exact cell stays
in this gateway's store, never on chain), derive the pseudonym from the root
tag (auth.pseudonym_for), and register it on chain, refusing a device whose
pseudonym belongs to another gateway. On chain the device's services, cell,
policy and duty cycle are sealed under the registry data key (the keeper,
gateway/discovery/keeper.py, holds it); only the pseudonym is in clear. Then store the device durably and
return the identity token (for the link), a read-only application token and
the owner handle. Re-pairing with the same gateway keeps the link id, the
pseudonym and the queue and updates the record; unpairing unregisters it and
cancels its queue. The pairing result says whether discovery shows the device
yet, from this gateway's discovery index (visibility.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import h3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ...abci_app.codes import Code, TxError
from ...abci_app.txs import VALIDATORS, check_services
from ..discovery.catalog import CatalogFull, load_catalog
from ..discovery.sealbox import Keyring, SealError, TooLarge
from ...firmware.caplets import api as cl
from ..tokens import auth
from ...chain import ChainClient, ChainError, TxRejected
from ..errors import BadRequest, NotFound, Precondition, Unavailable
from ..manifest import Manifest
from ..metrics import GatewayMetrics
from . import visibility
from .channel import AAD_RESULT, CommissionCode, Offers, seal
from ..api.service import owner_handle
from ..store.store import Device, GatewayStore
from ...proto import gateway_pb2 as gw
from ...proto import registry_pb2 as pb

log = logging.getLogger(__name__)
LINK_ID_LEN = 16


class Commissioner:
    def __init__(self, store: GatewayStore, offers: Offers, code: CommissionCode, chain: ChainClient,
                 key: Ed25519PrivateKey, secret: bytes, link_endpoint: str,
                 metrics: GatewayMetrics | None = None, clock=None, keeper=None, replica=None,
                 submitter=None) -> None:
        self.store, self.offers, self.code, self.chain = store, offers, code, chain
        self.submitter = submitter  # gateway/submitter.py: device txs ride in the gateway's batches
        self.keeper = keeper  # discovery.keeper.SealKeeper: the data key devices are sealed under
        self.replica = replica  # discovery.replica.ReplicaFollower: tells whether discovery shows the device
        self.key, self.secret, self.link_endpoint = key, secret, link_endpoint
        self.gateway_id = offers.gateway_id
        self.metrics = metrics or GatewayMetrics()
        self.clock = clock or (lambda: int(time.time() * 1000))
        # One pairing or unpairing at a time, the code checked inside: the one-time code is
        # rotated only after the chain has the device, so concurrent attempts with one code
        # (or for one link id) would otherwise all pass their checks before any of them ends.
        self._one_at_a_time = asyncio.Lock()
        self._refs_from: int | None = None  # the chain's manifest_ref_height (0: never), read once

    def begin(self, msg: gw.PairBegin) -> gw.PairOffer:
        return self.offers.begin(msg)

    async def complete(self, msg: gw.PairComplete) -> gw.PairSealed:
        payload, key = self.offers.open(msg)
        try:
            async with self._one_at_a_time:
                result = await (self._unpair(payload) if payload.unpair else self._pair(payload))
        except Exception as exc:
            self.metrics.pairings.labels(type(exc).__name__).inc()
            raise
        self.metrics.pairings.labels("unpaired" if payload.unpair else "paired").inc()
        nonce, ct = seal(key, result.SerializeToString(), AAD_RESULT)
        return gw.PairSealed(nonce=nonce, ciphertext=ct)

    # ---- pairing ----

    async def _pair(self, p: gw.PairPayload) -> gw.PairResult:
        self.code.check(p.commission_code)
        root = _root_token(p.root_token)
        manifest = Manifest.parse(p.manifest)
        res, k = p.resolution, p.k
        if not 0 <= res <= 15 or k < 1:
            raise BadRequest("policy needs resolution 0..15 and k >= 1")
        if not p.cell or not h3.is_valid_cell(h3.int_to_str(p.cell)):
            raise BadRequest("the device needs a location (an H3 cell); give --location at `device init`")
        if h3.get_resolution(h3.int_to_str(p.cell)) < res:
            raise BadRequest(f"the device gave a cell coarser than resolution {res}")
        coarse = h3.str_to_int(h3.cell_to_parent(h3.int_to_str(p.cell), res))
        pseudonym = auth.pseudonym_for(root)
        existing = self.store.device_by_pseudonym(pseudonym)
        link_id = self._link_id(p.link_id, root)
        fields = pb.DeviceFields(services=manifest.descriptors(), cell=coarse,
                                 policy=pb.PrivacyPolicy(resolution=res, k=k), duty_cycle_s=manifest.duty_cycle_s)
        record = await self._registered(pseudonym)
        if record is not None and record.gateway_id != self.gateway_id:
            raise Precondition(f"this device is already paired with gateway {record.gateway_id}; "
                               "unpair it there first (edgistry pair --unpair --gateway THAT_GATEWAY)")
        height = await self._submit_sealed(pb.UpdateDevice if record is not None else pb.RegisterDevice,
                                           pseudonym, fields)
        dev = Device(link_id, pseudonym, root, manifest.to_json(), coarse, res, k, manifest.duty_cycle_s,
                     p.encrypt, owner_handle(pseudonym), p.cell, self.clock())
        if existing is not None and existing.link_id != link_id:
            await self.store.remove_device(existing.link_id, self.clock(),
                                           "the device was re-paired under a new link id")
        await self.store.put_device(dev)
        self.code.rotate()  # one-time: the next device needs the next code
        read_only = {t: manifest.read_only(t) for t in manifest.services}
        try:
            app = auth.app_token(root, read_only).to_bytes()
        except ValueError:
            app = b""  # only mutating methods: the owner derives a token deliberately
        log.info("paired device %s (%s) at cell %x", pseudonym.hex(), "re-paired" if record else "new", coarse)
        result = gw.PairResult(pseudonym=pseudonym,
                               identity_token=auth.identity_token(self.secret, link_id).to_bytes(),
                               app_token=app, owner_handle=dev.owner, link_endpoint=self.link_endpoint,
                               gateway_id=self.gateway_id, height=height, cell=coarse)
        return visibility.fill(result, await visibility.after_commit(self.replica, pseudonym, height))

    def _link_id(self, given: bytes, root: bytes) -> bytes:
        """The device's own link id (its home keeps it across re-pairing)."""
        if len(given) != LINK_ID_LEN:
            raise BadRequest(f"a link id is {LINK_ID_LEN} bytes")
        other = self.store.device(given)
        if other is not None and other.root_token != root:
            raise Precondition("that link id belongs to another device paired here")
        return given

    # ---- unpairing ----

    async def _unpair(self, p: gw.PairPayload) -> gw.PairResult:
        root = _root_token(p.root_token)
        pseudonym = auth.pseudonym_for(root)
        dev = self.store.device_by_pseudonym(pseudonym)
        record = await self._registered(pseudonym)
        if record is not None and record.gateway_id != self.gateway_id:
            raise Precondition(f"this device is paired with gateway {record.gateway_id}, not this one")
        if dev is None and record is None:
            raise NotFound("this device is not paired here")
        height = await self._submit(pb.UnregisterDevice(pseudonym=pseudonym)) if record is not None else 0
        if dev is not None:
            await self.store.remove_device(dev.link_id, self.clock())
        return gw.PairResult(pseudonym=pseudonym, gateway_id=self.gateway_id, height=height,
                             owner_handle=owner_handle(pseudonym))

    # ---- sealing ----

    async def _ring(self, refresh: bool = False) -> Keyring:
        if self.keeper is None:
            raise Unavailable("this gateway has no seal key keeper: it cannot register devices")
        try:
            if refresh:
                await self.keeper.refresh()
            return await self.keeper.ready()
        except TimeoutError as exc:
            raise Unavailable(f"the registry's data key is not available here yet: {exc}") from exc
        except ChainError as exc:
            raise Unavailable(f"the registry is unreachable: {exc}") from exc

    async def _by_reference(self, ring: Keyring, fields: pb.DeviceFields) -> tuple[pb.DeviceFields, int | None]:
        """``fields`` as the chain takes them now: from its manifest_ref_height, the services
        replaced by their catalog slot (and the slot, while its write has not committed)."""
        if self._refs_from is None:
            try:
                self._refs_from = await self.chain.manifest_ref_height()
            except ChainError as exc:
                raise Unavailable(f"the registry is unreachable: {exc}") from exc
        if not self._refs_from or (self._refs_from > 1 and await self.chain.height() + 1 < self._refs_from):
            return fields, None  # a chain without manifests by reference, or not yet at its height
        catalog = self.submitter.catalog if self.submitter is not None else None
        if catalog is None:
            raise Unavailable("this gateway has no catalog of manifests: it cannot register devices on this chain")
        if not catalog.loaded:
            try:
                await load_catalog(catalog, self.chain, ring, self.gateway_id)
            except ChainError as exc:
                raise Unavailable(f"the registry is unreachable: {exc}") from exc
        try:
            check_services(fields.services)
            slot, held = catalog.ref(fields.services)
        except TxError as exc:
            raise BadRequest(f"the registry would refuse the device: {exc.log}") from exc
        except CatalogFull as exc:
            raise Unavailable(str(exc)) from exc
        out = pb.DeviceFields(cell=fields.cell, duty_cycle_s=fields.duty_cycle_s, manifest=slot + 1)
        out.policy.CopyFrom(fields.policy)
        return out, slot if held else None

    async def _sealed(self, cls, ring: Keyring, pseudonym: bytes, fields: pb.DeviceFields):
        """The device message with ``fields`` sealed, and the catalog slot it must follow."""
        fields, slot = await self._by_reference(ring, fields)
        try:
            return cls(pseudonym=pseudonym, sealed=ring.seal(pseudonym, fields)), slot
        except (ValueError, TooLarge) as exc:
            raise BadRequest(f"the registry would refuse the device: {exc}") from exc
        except SealError as exc:
            raise Unavailable(str(exc)) from exc

    async def _submit_sealed(self, cls, pseudonym: bytes, fields: pb.DeviceFields) -> int:
        """Seal ``fields`` under the current epoch and submit; once more if an epoch opened meanwhile."""
        for attempt in range(2):
            ring = await self._ring(refresh=attempt > 0)
            msg, slot = await self._sealed(cls, ring, pseudonym, fields)
            try:
                return await self._submit(msg, slot)
            except Unavailable as exc:
                stale = isinstance(exc.__cause__, TxRejected) and exc.__cause__.code == Code.STALE_EPOCH
                if not stale or attempt:
                    raise
        raise AssertionError("unreachable")

    async def reseal(self, ring: Keyring) -> int:
        """Seal this gateway's devices still under an older epoch again, under the current one."""
        try:
            records = await self.chain.devices("/devices/by_gateway", pb.DeviceQuery(gateway_id=self.gateway_id))
        except ChainError as exc:
            raise Unavailable(f"the registry is unreachable: {exc}") from exc
        moved = 0
        for rec in records:
            if rec.sealed.epoch == ring.current:
                continue
            dev = self.store.device_by_pseudonym(rec.pseudonym)
            if dev is None:
                log.warning("device %s is on chain for this gateway but not in its store: not re-sealed",
                            rec.pseudonym.hex())
                continue
            await self._submit(*await self._sealed(pb.UpdateDevice, ring, rec.pseudonym, device_fields(dev)))
            moved += 1
        return moved

    # ---- chain ----

    async def _registered(self, pseudonym: bytes) -> pb.DeviceRecord | None:
        try:
            res = await self.chain.query("/device", pb.DeviceQuery(pseudonym=pseudonym).SerializeToString())
        except ChainError as exc:
            raise Unavailable(f"the registry is unreachable: {exc}") from exc
        return pb.DeviceRecord.FromString(res.value) if res.code == 0 else None

    async def _submit(self, msg, slot: int | None = None) -> int:
        kind = {pb.RegisterDevice: "register_device", pb.UpdateDevice: "update_device",
                pb.UnregisterDevice: "unregister_device"}[type(msg)]
        try:
            VALIDATORS[kind](msg)  # the chain's own stateless check, before broadcasting
            if self.submitter is not None:
                return (await self.submitter.submit(msg, slot)).height
            return (await self.chain.submit(self.key, msg)).height
        except TxError as exc:
            raise BadRequest(f"the registry would refuse the device: {exc}") from exc
        except TxRejected as exc:
            if exc.code in (Code.DEVICE_EXISTS, Code.NOT_DEVICE_OWNER):
                raise Precondition(f"the registry refused: {exc.log}") from exc
            raise Unavailable(str(exc)) from exc
        except ChainError as exc:
            raise Unavailable(f"the registry is unreachable: {exc}") from exc


def device_fields(dev: Device) -> pb.DeviceFields:
    """What the chain holds sealed for a paired device, from this gateway's store."""
    return pb.DeviceFields(services=dev.parsed_manifest.descriptors(), cell=dev.cell,
                           policy=pb.PrivacyPolicy(resolution=dev.resolution, k=dev.k),
                           duty_cycle_s=dev.duty_cycle_s)


def _root_token(raw: bytes) -> bytes:
    """Check that ``raw`` is a root token (one frame, the ROOT capability)."""
    try:
        token = cl.load(raw)
    except cl.TokenError as exc:
        raise BadRequest(f"root token does not decode: {exc}") from exc
    if len(token) != 1 or not isinstance(token.capabilities[0], cl.Root):
        raise BadRequest("that is not a device root token (one frame holding the root capability)")
    return token.to_bytes()
