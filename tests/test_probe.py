"""The gateway's probes: the stage timings benchmarks read come from hooks the gateway
offers (gateway/probe.py), over the real service and a real link server."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from edgistry.firmware.caplets import api as cl
from edgistry.gateway import probe
from edgistry.gateway.api.service import Call, GatewayService, owner_handle
from edgistry.gateway.link.backend import MemoryBackend, TimedBackend
from edgistry.gateway.store.store import Device, GatewayStore, new_id
from edgistry.gateway.tokens import auth
from runtime_helpers import GATEWAY_SECRET, Queue, device, make_home, start_server

MANIFEST = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["read"]}]}


class Recorder:
    """A probe that keeps every span it is given."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, bool]]] = defaultdict(list)

    def span(self, name: str, seconds: float, sample: bool = False) -> None:
        assert seconds >= 0
        self.spans[name].append((seconds, sample))


async def test_service_reports_authorise_and_submit_spans(tmp_path: Path) -> None:
    """A single submit and a batch of two report one authorisation per item and one
    submit.total per item; a service without a probe reports nothing and still works."""
    store = GatewayStore(tmp_path / "gw")
    try:
        rec = Recorder()
        root = cl.root(cl.new_secret())
        dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1)
        await store.put_device(dev)
        token = auth.app_token(root.to_bytes(), {"sensor": ["read"]}).to_bytes()
        svc = GatewayService(store, "gw-a", GATEWAY_SECRET, probe=rec)
        target = owner_handle(dev.pseudonym)
        await svc.submit(Call(target, "read", token=token))
        await svc.submit_many([Call(target, "read", token=token), Call(target, "read", token=token)])
        assert len(rec.spans[probe.SUBMIT_AUTHORISE]) == 3
        assert [s for _, s in rec.spans[probe.SUBMIT_TOTAL]] == [True, True, True]
        await GatewayService(store, "gw-a", GATEWAY_SECRET).submit(Call(target, "read", token=token))
        assert len(rec.spans[probe.SUBMIT_TOTAL]) == 3
    finally:
        store.close()


async def test_link_server_and_timed_backend_report_a_wake(tmp_path: Path) -> None:
    """A device's wake over a real link server reports its connection, the flight read to
    REQUESTS written during the handshake, and every backend call the wake made."""
    rec = Recorder()
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(TimedBackend(backend, rec), probe=rec)
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=True)
        Queue(backend, home).add("sensor", "read")
        report = await device(home).wake_with_fallback()
        assert report.executed == 1
    finally:
        await srv.close()
    assert len(rec.spans[probe.LINK_CONNECTION]) == 1
    assert rec.spans[probe.LINK_ESTABLISHED_TO_REQUESTS][0][1] is True
    for name in ("link.device_for_link", "link.pending", "link.await.answered", "link.await.delivered"):
        assert rec.spans[name], name
