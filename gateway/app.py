"""Assembling and running one gateway: every part and background loop, in one place.

``create_gateway(cfg)`` builds a :class:`Gateway`; ``await gw.start()`` opens
the store, starts the device link server, the client gRPC server (Gateway,
Commissioning, Discovery, health, reflection; TLS), the peer gRPC server (Peer;
mutual TLS), the HTTP side (/healthz, /metrics; TLS) and the loops: the expiry
sweeper, the liveness batcher, the refresher of the peer port's trusted
certificates and the registry follower (discovery/replica.py), which also
applies revocations block by block (:meth:`Gateway.apply_revocations`);
``await gw.stop()`` undoes all of it in reverse. With ``insecure``
(``--insecure``) every port speaks plaintext and the gateway says so loudly
at start.

Settings come from the node config's ``[gateway]`` table (all optional):
``max_queue_depth``, ``default_ttl_s``, ``max_batch`` (SubmitBatch items), ``liveness_interval_s``,
``chain_poll_s`` (how often the follower asks its node for new blocks: a
revocation is in force here one poll after its block commits),
``revocation_max_silence_s`` (token checks fail closed, UNAVAILABLE, when the
node has not answered for longer), ``sweep_interval_s``, ``seal_interval_s`` and
``seal_patience_s`` (the sealed registry's keeper), ``grpc_advertise``,
``link_advertise`` and ``peer_advertise`` (what the registry and devices are
told, default: the listen addresses), ``tls_hosts`` (extra names or addresses
for the TLS certificate, for browsers; gRPC clients need none),
``peer_roots_interval_s`` (how often the peer port re-reads the registered
certificates as a fallback; the follower hands them over at every gateway event), ``revocation_file`` (a local list written by
``edgistry token revoke --list FILE``; default ``<home>/revoked.json``; applied
at each registry load and by the sweeper whenever it changes),
``store_map_size`` (bytes of LMDB map: the store's hard size; default 1 GiB) and
``result_retention_s`` (how long answers stay fetchable; default a day).
Overload limits come from the ``[limits]`` table (config.Limits): admission.py,
api/admission_grpc.py; faults from health.py and watchdog.py show in /healthz.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from ..abci_app.txs import LIVENESS_GRANULARITY_S, MAX_LIVENESS_ENTRIES, gateway_id_for
from ..aiotasks import cancel_and_wait
from ..config import NodeConfig, load_ed25519_pem, public_bytes
from ..firmware.caplets.revocation import RevocationSet
from .tokens.revocations import DEFAULT_MAX_SILENCE_S, LiveRevocations
from .link.store_backend import StoreLinkBackend
from ..chain import ChainClient, ChainError, TxRejected
from .submitter import RegistrySubmitter
from .pairing.commissioner import Commissioner
from .discovery.keeper import PATIENCE_S, SealKeeper
from .discovery.catalog import ManifestCatalog
from .discovery.sealbox import load_seal_key
from .api.convert import from_pb, to_request
from .api.grpc_server import GRACE_S, start_grpc, start_peer_grpc
from .link.server import LinkMetrics, LinkServer
from .link.dgram_server import DgramMetrics, DgramServer
from .admission import Admission, ConnectionCaps
from .api.admission_grpc import service_hook
from .errors import GatewayError
from .health import Health
from .quiet import quiet_http_garbage
from .metrics import GatewayMetrics
from .watchdog import LoopLag, watch_chain
from .pairing.channel import CommissionCode, Offers, code_announcement
from .api.peer import Directory, ForwardChecker, PeerClient, PeerRoots
from .api.service import Call, GatewayService, Result, Settings
from .status import mount as mount_status
from .store.store import GatewayStore
from .store.kv import DEFAULT_MAP_SIZE
from .tls import ensure_identity, server_credentials
from .twins import grpc_service as twin_grpc
from .twins.service import TwinService
from ..gc_policy import freeze_startup_objects
from ..http_guard import ConnectionGuard, GuardedSite
from ..proto import gateway_pb2 as gw
from ..proto import registry_pb2 as pb

log = logging.getLogger(__name__)
INSECURE_BANNER = (
    "INSECURE: this gateway runs with --insecure: TLS is OFF on its gRPC, peer and HTTP ports. Client tokens,\n"
    "forwarded calls and metrics cross the network in clear; anyone on the path can read and reuse them.\n"
    "Use it only on a network you trust, for development; without --insecure every port speaks TLS.")
FORWARD_SLACK_S = 10.0  # a forwarded Invoke may take this much longer than the client's own timeout
CHAIN_POLL_S = 0.05  # revoke-to-refusal is one block interval plus at most this (and the apply)
FIRST_LOAD_S = 5.0  # start() waits this long for the registry (revocations) before serving anyway
NEVER_EXPIRES_S = 2**62


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class PeerForwarder:
    """The service's view of other gateways (service.Forwarder) over PeerClient."""

    def __init__(self, client: PeerClient, directory: Directory,
                 revocation_height: Callable[[], int] = lambda: 0) -> None:
        self.client, self.directory = client, directory
        # this gateway's revocation height, sent with result, cancel and watch forwards as
        # invoke and submit carry theirs: the holder answers once its own revocations reach it
        self.revocation_height = revocation_height

    async def owner_of(self, pseudonym: bytes) -> str | None:
        rec = await self.directory.device(pseudonym)
        return rec.gateway_id if rec is not None else None

    async def call(self, gateway_id: str, kind: str, call: Call | None = None, request_id: str = "",
                   token: bytes = b"") -> Result:
        if call is not None:
            timeout = (call.timeout_ms / 1000 if call.timeout_ms else 30.0) + FORWARD_SLACK_S
            res = await self.client.forward(gateway_id, kind, request=to_request(call), timeout=timeout)
        else:
            res = await self.client.forward(gateway_id, kind, result=gw.ResultRequest(
                request_id=request_id, token=token, revocation_height=self.revocation_height()))
        return from_pb(res)

    async def watch(self, gateway_id: str, request_id: str, token: bytes) -> AsyncIterator[Result]:
        req = gw.ResultRequest(request_id=request_id, token=token, revocation_height=self.revocation_height())
        async for msg in self.client.watch(gateway_id, req):
            yield from_pb(msg)


class Gateway:
    def __init__(self, cfg: NodeConfig, rpc_url: str | None = None,
                 announce: Callable[[str], None] = log.warning) -> None:
        self.cfg = cfg
        self.opts: dict = dict(cfg.extra.get("gateway", {}))
        self.announce = announce
        self.key = load_ed25519_pem(cfg.keys_dir / "gateway.pem")
        self.secret = (cfg.keys_dir / "gateway.secret").read_bytes()
        self.gateway_id = gateway_id_for(public_bytes(self.key))
        self.chain = ChainClient(rpc_url or cfg.rpc_url)
        # registry writes of this gateway go out as batch txs (revocations at once): gateway/submitter.py
        self.submitter = RegistrySubmitter(self.chain, self.key)
        self.metrics = GatewayMetrics()
        self.admission = Admission(cfg.limits)
        self.health = Health(on_fault=lambda cause: self.metrics.faults.labels(cause).inc())
        self.loop_lag = LoopLag()
        self.grpc_endpoint = str(self.opts.get("grpc_advertise") or cfg.grpc_listen)
        self.link_endpoint = str(self.opts.get("link_advertise") or cfg.link_listen)
        self.peer_endpoint = str(self.opts.get("peer_advertise") or cfg.peer_listen)
        self.insecure = bool(cfg.insecure)
        # made even with --insecure: this gateway still presents it when it forwards to a TLS peer
        self.tls = ensure_identity(cfg.tls_key_path, cfg.tls_cert_path, self.key,
                                   [str(h) for h in self.opts.get("tls_hosts", [])])
        self.peer_roots = PeerRoots(self.tls)
        self.revocation_file = Path(self.opts.get("revocation_file") or cfg.home / "revoked.json")
        self.store: GatewayStore | None = None
        self.replica = None  # discovery's ReplicaFollower
        self.service: GatewayService | None = None
        self.twins: TwinService | None = None
        self.link: LinkServer | None = None
        self.dgram: DgramServer | None = None
        self.code: CommissionCode | None = None
        self._grpc = None
        self._peer_grpc = None
        self._registration_checked = asyncio.Event()
        self._http: web.AppRunner | None = None
        self.http_guard: ConnectionGuard | None = None  # the HTTP port's caps and deadlines
        self._tasks: list[asyncio.Task] = []
        self._peer: PeerClient | None = None
        self.keeper: SealKeeper | None = None
        self.ports: dict[str, int] = {}
        self.chain_ok_at = 0.0
        self._local_stamp = 0  # mtime of the local revocation list last applied
        # revocations in the token set whose other steps (requests, twins, notice log) a
        # failure interrupted: done again with the next call, since the set no longer says "new"
        self._unsettled: list[tuple[bytes, int]] = []

    # ---- lifecycle ----

    async def start(self) -> None:
        # reads here; every write is an operation its writer process commits (gateway/store/child.py)
        o = self.opts
        self.store = GatewayStore(self.cfg.gateway_dir, map_size=int(o.get("store_map_size", DEFAULT_MAP_SIZE)),
                                  result_retention_ms=int(float(o.get("result_retention_s", 86400)) * 1000))
        try:
            await self._start_parts()
        except BaseException:
            await self.stop()
            raise

    async def _start_parts(self) -> None:
        cfg, o = self.cfg, self.opts
        # filled by the registry follower's load, with the local list file (apply_revocations),
        # so every entry also ends its queued requests and reaches the devices' notice log
        revoked = self.revoked = LiveRevocations(
            max_silence_s=float(o.get("revocation_max_silence_s", DEFAULT_MAX_SILENCE_S)))
        settings = Settings(max_queue_depth=int(o.get("max_queue_depth", Settings.max_queue_depth)),
                            default_ttl_s=int(o.get("default_ttl_s", Settings.default_ttl_s)),
                            max_batch=int(o.get("max_batch", Settings.max_batch)))
        directory = self.directory = Directory(self.chain)
        self._peer = PeerClient(self.key, self.gateway_id, directory, self.metrics, tls=self.tls,
                                allow_plaintext=self.insecure)
        self.service = GatewayService(self.store, self.gateway_id, self.secret, self.metrics, revoked, settings,
                                      PeerForwarder(self._peer, directory, lambda: revoked.height))
        self.service.admit = service_hook(self.admission)
        self.metrics.watch_queues(self.store.depths)
        self.metrics.watch_admission(self._admission_snapshot)
        self.metrics.watch_health(self.health.active)
        self.store.fault_listeners.append(self._store_fault)

        host, port = host_port(cfg.link_listen)
        self.link = LinkServer(StoreLinkBackend(self.store, self.secret, self.metrics, revoked=revoked), host, port,
                               metrics=LinkMetrics(),
                               caps=ConnectionCaps(cfg.limits.link_per_source, cfg.limits.link_total))
        await self.link.start()
        self.ports["link"] = self.link.port
        if cfg.link_udp:  # the datagram link: same port number, UDP, same backend (queues, tickets store)
            dgram = DgramServer(self.link.backend, host, self.link.port, metrics=DgramMetrics(),
                                rate=cfg.limits.link_dgram_rate, burst=cfg.limits.link_dgram_burst)
            try:
                await dgram.start()
                self.dgram = dgram
                self.ports["link_udp"] = dgram.port
                self.metrics.watch_dgram(dgram.metrics.snapshot)
            except OSError as exc:
                log.error("datagram link not started: udp %s:%d: %s (set link_udp = false to silence)",
                          host, self.link.port, exc)
        self.service.on_queued = self.link.notify
        self.metrics.watch_link(self._link_snapshot)
        self.twins = TwinService(self.store, self.gateway_id, self.secret, revoked, on_changed=self.link.notify,
                                 expected_at=self.service.expected_at, owner_of=self.service.forwarder.owner_of)

        self.code = CommissionCode(cfg.home / "commission.code")
        # the sealed registry: this gateway's X25519 seal key and the data keys wrapped to it
        self.keeper = SealKeeper(self.chain, self.key, self.gateway_id, load_seal_key(cfg.keys_dir, create=True),
                                 patience_s=float(o.get("seal_patience_s", PATIENCE_S)))
        # the catalog of its devices' manifests: its slot writes ride in the submitter's batches
        keeper, gid = self.keeper, self.gateway_id
        self.submitter.use_catalog(ManifestCatalog(), lambda slot, m: keeper.ring.seal_manifest(gid, slot, m))
        offers = Offers(self.key, cfg.chain_id, tls=None if self.insecure else (self.tls.cert_der, self.tls.signature))
        # discovery, its replica of the registry, invoke-any
        from .discovery import grpc_service as dg

        self.discovery, self.replica, _ = dg.create_discovery(cfg.home, self.chain, self.gateway_id,
                                                              self.grpc_endpoint, keeper=self.keeper)
        commissioner = Commissioner(self.store, offers, self.code, self.chain, self.key,
                                    self.secret, self.link_endpoint, self.metrics, keeper=self.keeper,
                                    replica=self.replica, submitter=self.submitter)
        self.keeper.reseal = commissioner.reseal
        self.service.resolvers.append(dg.handle_resolver(self.discovery, self.secret, revoked=revoked))  # handles
        index = self.discovery.index
        self.service.disclosed = lambda ps, stype: index.disclosure_cell(stype, ps) is not None
        self.replica.on_revocations, self.replica.on_heard = self.apply_revocations, revoked.heard
        self.replica.on_gateways = self._gateways_changed  # a peer registered or rotated: trusted at once
        self.replica.poll_s = float(o.get("chain_poll_s", CHAIN_POLL_S))
        discovery = dg.discovery_servicer(self.discovery, self.secret, dg.GatewayInvoker(self.service), self.replica,
                                          revoked=revoked)
        try:  # serve with the registry's revocations loaded (token checks fail closed until then)
            await asyncio.wait_for(self.replica.load(), FIRST_LOAD_S)
            revoked.heard()
        except (ChainError, asyncio.TimeoutError, OSError) as exc:
            log.warning("registry not loaded yet (%s): token checks refused until it is", exc)
        # publish this gateway's certificate and peer endpoint before serving: peers trust it from then on
        self._tasks = [asyncio.create_task(self._check_registration(), name="registration")]
        try:
            await asyncio.wait_for(self._registration_checked.wait(), FIRST_LOAD_S)
        except asyncio.TimeoutError:
            log.warning("registry record not checked yet: peers may refuse this gateway until it is published")
        self._grpc, self.ports["grpc"] = await start_grpc(
            cfg.grpc_listen, self.service, commissioner, None, self.metrics,
            extra=[lambda server: dg.add_to_server(server, discovery),
                   lambda server: twin_grpc.add_to_server(server, self.twins)],
            admission=self.admission, credentials=None if self.insecure else server_credentials(self.tls))
        if not self.replica.loaded:
            await self._refresh_peer_roots_once()
        self._peer_grpc, self.ports["peer"] = await start_peer_grpc(
            cfg.peer_listen, self.service, ForwardChecker(directory, require_tls=not self.insecure), self.metrics,
            None if self.insecure else self.peer_roots.credentials())
        host, port = host_port(cfg.http_listen)
        quiet_http_garbage()  # a gRPC client or a scanner on the HTTP port: one warning line
        self.http_guard = ConnectionGuard()
        self._http = web.AppRunner(self._http_app(self.http_guard), access_log=None)
        await self._http.setup()
        ssl_context = None if self.insecure else self.tls.ssl_server_context(cfg.tls_cert_path, cfg.tls_key_path)
        site = GuardedSite(self._http, host, port, self.http_guard, ssl_context=ssl_context, reuse_port=False)
        await site.start()
        self.ports["http"] = site.port

        interval = lambda name, default: float(o.get(name, default))  # noqa: E731
        self._tasks += [asyncio.create_task(coro, name=name) for name, coro in (
            ("sweeper", self._every(interval("sweep_interval_s", 1.0), self._sweep)),
            ("liveness", self._every(interval("liveness_interval_s", 60.0), self.report_liveness)),
            ("seal", self._seal_loop(interval("seal_interval_s", 5.0))),
            ("peer_roots", self._every(interval("peer_roots_interval_s", 30.0), self.refresh_peer_roots)),
            ("replica", self.replica.run()),
            ("chain-watch", watch_chain(self.chain, self.health, cfg.limits.chain_stale_s, self._chain_ok)),
            ("loop-lag", self.loop_lag.run()),
        )]
        if self.insecure:
            for line in INSECURE_BANNER.splitlines():
                log.warning(line)
            self.announce(INSECURE_BANNER)
        self.announce(f"gateway {self.gateway_id}: gRPC {cfg.grpc_listen}, peers {cfg.peer_listen}, "
                      f"device link {cfg.link_listen}, HTTP {cfg.http_listen}; chain RPC {self.chain.url}")
        if not self.insecure:
            self.announce(f"TLS certificate {cfg.tls_cert_path} (SHA-256 {self.tls.pin.sha256}): clients pin it "
                          f"with --pin FILE or from the registry")
        self.announce(code_announcement(self.code.code, self.code.path, first=True))

    async def stop(self) -> None:
        stuck = await cancel_and_wait(self._tasks)
        if stuck:
            log.error("gateway stop: %d task(s) ignore cancellation: %s", len(stuck),
                      ", ".join(t.get_name() for t in stuck))
        self._tasks = []
        if self._grpc is not None:
            await self._grpc.stop(GRACE_S)
            self._grpc = None
        if self._peer_grpc is not None:
            await self._peer_grpc.stop(GRACE_S)
            self._peer_grpc = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self.dgram is not None:
            await self.dgram.close()
            self.dgram = None
        if self.link is not None:
            await self.link.close()
            self.link = None
        if self._peer is not None:
            await self._peer.close()
        await self.submitter.close()
        await self.chain.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    def _replica_state(self) -> dict | None:
        if self.replica is None:
            return None
        age = self.replica.age_s()
        return {"height": self.replica.index.height, "age_s": None if age is None else round(age, 1)}

    def _store_fault(self, cause: str | None, reason: str) -> None:
        if cause is None:
            self.health.clear("disk_full", "map_full", "store_writer", "store_io")
        else:
            self.health.fail(cause, reason)

    def _chain_ok(self) -> None:
        self.chain_ok_at = time.time()

    def _admission_snapshot(self) -> dict:
        a = self.admission
        return {"refusals": dict(a.refusals), "in_flight": a.in_flight, "waiting": a.waiting,
                "loop_lag_s": self.loop_lag.worst}

    def _link_snapshot(self) -> dict:
        if self.link is None:
            return {}
        snap = self.link.metrics.snapshot()
        snap["sessions_open"] = len(self.link.connected())
        snap["sessions_total"] = snap.get("handshakes_full", 0) + snap.get("handshakes_resumed", 0)
        return snap

    # ---- HTTP ----

    def _http_app(self, guard: ConnectionGuard) -> web.Application:
        app = web.Application(middlewares=[guard.middleware])
        operator = None  # the status page's OperatorAuth, set below

        async def healthz(request: web.Request) -> web.Response:
            started = self.store is not None and self.link is not None
            ok = started and self.health.ok
            faults = self.health.report()
            if operator is None or not operator.check_bearer(request.headers.get("Authorization")):
                # a fault's reason names internals (the node RPC's URL, store errors): operators only
                faults = [{"cause": f["cause"], "for_s": f["for_s"]} for f in faults]
            status = "ok" if ok else ("starting" if not started else
                                      "unhealthy: " + ", ".join(f["cause"] for f in faults))
            # no device count: /healthz is public, and a count moving would show a pairing
            body = {"status": status, "gateway_id": self.gateway_id, "faults": faults, "tls": not self.insecure,
                    "chain_seen_s_ago": round(time.time() - self.chain_ok_at, 1) if self.chain_ok_at else None,
                    "replica": self._replica_state()}
            return web.json_response(body, status=200 if ok else 503)

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8",
                                headers={"X-Prometheus-Format": "0.0.4"})

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics)
        operator = mount_status(app, self)  # the operators' page; guards everything here but /healthz
        return app

    # ---- background loops ----

    async def _every(self, seconds: float, step: Callable) -> None:
        """Run ``step`` every ``seconds`` (jittered 10%); a failing step is logged, never fatal."""
        while True:
            await asyncio.sleep(seconds * random.uniform(0.9, 1.1))
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except ChainError as exc:
                log.info("%s: registry unreachable: %s", getattr(step, "__name__", step), exc)
            except GatewayError as exc:  # a fault with a cause (store full, writer gone): /healthz names it
                log.warning("%s: %s", getattr(step, "__name__", step), exc)
            except Exception:
                log.exception("background step %s failed", getattr(step, "__name__", step))

    async def _sweep(self) -> None:
        """Forget old response slots and tickets, then dead-letter expired requests (in steps
        that fit a full map: GatewayStore.sweep_expired); drop expired revocations; apply
        the local revocation list if it changed."""
        now = int(time.time() * 1000)
        self.revoked.prune(now / 1000)
        await asyncio.gather(self.store.purge_finished(now), self.store.purge_tickets(now))
        expired = await self.store.sweep_expired(now)
        if expired:
            self.metrics.expired.inc(len(expired))
            log.info("dead-lettered %d expired request(s)", len(expired))
        await self._local_revocations()

    async def report_liveness(self) -> int:
        """One ReportLiveness tx for all devices seen in a new 5-minute bucket (not one per wake)."""
        due = self.store.liveness_due(LIVENESS_GRANULARITY_S)[:MAX_LIVENESS_ENTRIES]
        if not due:
            return 0
        msg = pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=ps, last_seen=bucket) for _, ps, bucket in due])
        await self.submitter.submit(msg)
        await self.store.liveness_reported(due)
        self.chain_ok_at = time.time()
        return len(due)

    async def apply_revocations(self, records: list[tuple[bytes, int]], height: int, complete: bool) -> int:
        """Put revocations in force (the follower calls this for each height,
        and with the whole list at a (re)load, ``complete``, when the local
        list file is merged too), in this order: the set every token check
        reads (refusals start now), every active request made with a revoked
        chain ended REVOKED and every forward of one cancelled at its holder
        (acknowledged), the devices' notice log; then ``height`` says they are
        all in force. A failure raises before ``height`` moves: retried."""
        if complete:
            records = records + [(h, e if e is not None else NEVER_EXPIRES_S)
                                 for h, e in RevocationSet.load(self.revocation_file).records()]
        new = [(h, e) for h, e in records if self.revoked.revoke(h, e)]
        todo = self._unsettled + new
        if todo:
            self._unsettled = todo  # every step is idempotent: a retry does them all again
            ended = await self.service.revoked_now([h for h, _ in todo])
            await self.twins.revoked_now([h for h, _ in todo])  # undelivered twin changes under them withdrawn
            await self.store.add_revocations(todo)
            self._unsettled = []
            log.info("height %d: %d revocation(s) in force, %d request(s) ended REVOKED", height, len(todo), ended)
        self.revoked.height = max(self.revoked.height, height)
        self.chain_ok_at = time.time()
        return len(new)

    async def _local_revocations(self) -> None:
        """Apply the local list file again when it changed (`token revoke --list FILE`)."""
        try:
            stamp = self.revocation_file.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp != self._local_stamp:
            self._local_stamp = stamp
            records = [(h, e if e is not None else NEVER_EXPIRES_S)
                       for h, e in RevocationSet.load(self.revocation_file).records()]
            await self.apply_revocations(records, self.revoked.height, False)

    async def _seal_loop(self, seconds: float) -> None:
        """The keeper's steps: at once and back to back while each does something (a new
        gateway registers its seal key, then gets its data key), then every ``seconds``."""
        while True:
            did = ""
            try:
                did = await self.keeper.step()
            except asyncio.CancelledError:
                raise
            except ChainError as exc:
                log.info("seal keeper: registry unreachable: %s", exc)
            except Exception:
                log.exception("seal keeper step failed")
            await asyncio.sleep(0.2 if did else seconds * random.uniform(0.9, 1.1))

    async def refresh_peer_roots(self) -> bool:
        """Re-read the registered gateways' certificates for the peer port; True if they changed.
        (The registry follower hands them over at every gateway event; this is the fallback.)"""
        return self._gateways_changed(await self.chain.gateways())

    def _gateways_changed(self, records: list[pb.GatewayRecord]) -> bool:
        # forwards are checked against the registry afresh: a removed or re-keyed gateway is
        # refused from now on, not once its cached record ages out
        self.directory.forget_gateways()
        changed = self.peer_roots.update(records)
        if changed:
            log.info("peer port trusts %d gateway certificate(s)", len(self.peer_roots.certs))
        return changed

    async def _refresh_peer_roots_once(self) -> None:
        try:
            await self.refresh_peer_roots()
        except ChainError as exc:  # the refresher loop tries again; until then only this gateway's own
            log.info("registry not reachable for the peer certificates yet: %s", exc)

    @property
    def pin_flag(self) -> str:
        """How a client of this gateway connects, as CLI options: ``--pin CERT`` (``--insecure`` without TLS)."""
        return "--insecure" if self.insecure else f"--pin {self.cfg.tls_cert_path}"

    def tls_record(self) -> pb.SetGatewayTls:
        """What this gateway publishes about its transport (empty certificate with --insecure)."""
        if self.insecure:
            return pb.SetGatewayTls(peer_endpoint=self.peer_endpoint)
        return pb.SetGatewayTls(cert=self.tls.cert_der, cert_signature=self.tls.signature,
                                peer_endpoint=self.peer_endpoint)

    async def _check_registration(self) -> None:
        """Make the registry's endpoint, TLS certificate and peer endpoint for this gateway the ones it
        serves (clients pin the certificate, peers forward to the peer endpoint). A gateway not yet in
        the registry says so once and looks again until an admin has added it."""
        delay, told = 0.5, False
        while True:
            try:
                res = await self.chain.query("/gateway", self.gateway_id.encode())
                self.chain_ok_at = time.time()
                if res.code == 0:
                    await self._publish(pb.GatewayRecord.FromString(res.value))
                    self._registration_checked.set()
                    return
                if not told:
                    self.announce(f"gateway {self.gateway_id} is not in the registry: pairing will fail until an "
                                  f"admin runs `edgistry registry add-gateway --pubkey {public_bytes(self.key).hex()} "
                                  f"--endpoint {self.grpc_endpoint}`")
                    told = True
                    self._registration_checked.set()  # nothing to wait for: start serving
                delay = 10.0
            except TxRejected as exc:
                log.warning("the registry refused this gateway's record update: %s", exc)
                self._registration_checked.set()
                return
            except ChainError as exc:
                log.info("registry not reachable yet (%s); retrying", exc)
                delay = min(delay * 2, 30.0)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _publish(self, rec: pb.GatewayRecord) -> None:
        if rec.endpoint != self.grpc_endpoint:
            await self.submitter.submit(pb.UpdateGateway(endpoint=self.grpc_endpoint, operator=rec.operator))
            log.info("registry endpoint updated to %s", self.grpc_endpoint)
        want = self.tls_record()
        if (rec.tls_cert, rec.tls_cert_signature, rec.peer_endpoint) != \
                (want.cert, want.cert_signature, want.peer_endpoint):
            await self.submitter.submit(want)
            log.info("registry TLS certificate and peer endpoint %s published", self.peer_endpoint)


def create_gateway(cfg: NodeConfig, rpc_url: str | None = None,
                   announce: Callable[[str], None] = log.warning) -> Gateway:
    """A gateway for this node home (not started)."""
    return Gateway(cfg, rpc_url, announce)


async def serve(cfg: NodeConfig, rpc_url: str | None = None, announce: Callable[[str], None] = print) -> None:
    """Run a gateway until SIGINT/SIGTERM (``edgistry gateway``)."""
    from ..clikit import wait_for_signal

    gateway = create_gateway(cfg, rpc_url, announce)
    await gateway.start()
    freeze_startup_objects()  # no 35 ms full collections under load (gc_policy.py)
    try:
        await wait_for_signal()
    finally:
        announce("stopping gateway")
        await gateway.stop()
