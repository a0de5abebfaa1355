"""Prometheus metrics of one gateway (its own registry: tests run several gateways in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _QueueCollector:
    """Queue depths read from the store at scrape time (no per-device label:
    pseudonyms do not belong in a metrics system, and cardinality stays flat)."""

    def __init__(self, depths: Callable[[], dict[bytes, int]]) -> None:
        self._depths = depths

    def collect(self):
        depths = list(self._depths().values())
        total = GaugeMetricFamily("edgistry_queue_depth_total", "Requests queued or delivered, all devices")
        total.add_metric([], sum(depths))
        worst = GaugeMetricFamily("edgistry_queue_depth_max", "Deepest per-device queue")
        worst.add_metric([], max(depths, default=0))
        busy = GaugeMetricFamily("edgistry_devices_with_queued_work", "Devices with at least one waiting request")
        busy.add_metric([], len(depths))
        return [total, worst, busy]


class _LinkCollector:
    """The link server's own counters (gateway/link_server.py LinkMetrics), read at scrape time."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self._snapshot = snapshot

    def collect(self):
        s = self._snapshot()
        open_ = GaugeMetricFamily("edgistry_link_sessions_open", "Device link sessions open now")
        open_.add_metric([], s.get("sessions_open", 0))
        sessions = CounterMetricFamily("edgistry_link_sessions", "Device link sessions established")
        sessions.add_metric([], s.get("sessions_total", 0))
        hs = CounterMetricFamily("edgistry_link_handshakes", "Device link handshakes", labels=["kind"])
        hs.add_metric(["full"], s.get("handshakes_full", 0))
        hs.add_metric(["resumed"], s.get("handshakes_resumed", 0))
        rej = CounterMetricFamily("edgistry_link_rejections", "Device link connections refused",
                                  labels=["reason"])
        for reason, n in sorted(s.get("rejections", {}).items()):
            rej.add_metric([reason], n)
        return [open_, sessions, hs, rej]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgistry_requests", "Client requests accepted", ["kind"], registry=r)
        self.rejections = Counter("edgistry_rejections", "Client requests refused", ["reason"], registry=r)
        self.expired = Counter("edgistry_requests_expired", "Requests dead-lettered after their TTL", registry=r)
        self.cache_hits = Counter("edgistry_cache_hits", "Reads answered from cache without waking a device",
                                  registry=r)
        self.responses = Counter("edgistry_responses", "Device responses stored", ["outcome"], registry=r)
        self.pairings = Counter("edgistry_pairings", "Commissioning outcomes", ["outcome"], registry=r)
        # direction "in" (outcome accepted | refused) at the device's gateway,
        # "out" (outcome ok | the error's reason) at the forwarding one
        self.forwards = Counter("edgistry_peer_forwards", "Gateway-to-gateway calls", ["direction", "outcome"],
                                registry=r)
        self.invoke_latency = Histogram("edgistry_invoke_latency_seconds",
                                        "Invoke: from acceptance to the answer (includes device sleep)",
                                        buckets=LATENCY_BUCKETS, registry=r)

    def watch_queues(self, depths: Callable[[], dict[bytes, int]]) -> None:
        self.registry.register(_QueueCollector(depths))

    def watch_link(self, snapshot: Callable[[], dict]) -> None:
        self.registry.register(_LinkCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
