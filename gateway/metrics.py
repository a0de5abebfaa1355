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


class _DgramCollector:
    """The datagram link's counters (gateway/link/dgram_server.py DgramMetrics), read at scrape time."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self._snapshot = snapshot

    def collect(self):
        s = self._snapshot()
        dgrams = CounterMetricFamily("edgistry_link_dgram_datagrams", "Datagram link datagrams",
                                     labels=["direction"])
        dgrams.add_metric(["in"], s.get("datagrams_in", 0))
        dgrams.add_metric(["out"], s.get("datagrams_out", 0))
        nbytes = CounterMetricFamily("edgistry_link_dgram_bytes", "Datagram link bytes above UDP",
                                     labels=["direction"])
        nbytes.add_metric(["in"], s.get("bytes_in", 0))
        nbytes.add_metric(["out"], s.get("bytes_out", 0))
        wakes = CounterMetricFamily("edgistry_link_dgram_wakes", "Datagram link wakes", labels=["kind"])
        for kind in ("full", "full_fs", "saved"):
            wakes.add_metric([kind], s.get("wakes", {}).get(kind, 0))
        drops = CounterMetricFamily("edgistry_link_dgram_drops", "Datagram link datagrams dropped, by reason",
                                    labels=["reason"])
        for reason, n in sorted(s.get("drops", {}).items()):
            drops.add_metric([reason], n)
        resyncs = CounterMetricFamily("edgistry_link_dgram_resyncs", "RESYNC answers to stale wake counters")
        resyncs.add_metric([], s.get("resyncs", 0))
        reqs = CounterMetricFamily("edgistry_link_dgram_requests", "Requests sent over the datagram link")
        reqs.add_metric([], s.get("requests_sent", 0))
        resp = CounterMetricFamily("edgistry_link_dgram_responses", "Responses received over the datagram link")
        resp.add_metric([], s.get("responses_received", 0))
        return [dgrams, nbytes, wakes, drops, resyncs, reqs, resp]


class _AdmissionCollector:
    """Admission control (gateway/admission.py) read at scrape time: no cost per call."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self._snapshot = snapshot

    def collect(self):
        s = self._snapshot()
        refused = CounterMetricFamily("edgistry_admission_refusals",
                                      "Calls refused by admission control (RESOURCE_EXHAUSTED), by reason",
                                      labels=["reason"])
        for reason, n in sorted(s.get("refusals", {}).items()):
            refused.add_metric([reason], n)
        flight = GaugeMetricFamily("edgistry_calls_in_flight", "Client calls in the gateway now, by kind",
                                   labels=["kind"])
        flight.add_metric(["short"], s.get("in_flight", 0))
        flight.add_metric(["waiting"], s.get("waiting", 0))
        lag = GaugeMetricFamily("edgistry_event_loop_lag_seconds",
                                "Worst event-loop delay in the last second (what a device link or the "
                                "chain follower waits behind client calls)")
        lag.add_metric([], s.get("loop_lag_s", 0.0))
        return [refused, flight, lag]


class _HealthCollector:
    """Faults in force now (gateway/health.py), one gauge per cause."""

    def __init__(self, snapshot: Callable[[], dict[str, str]]) -> None:
        self._snapshot = snapshot

    def collect(self):
        causes = self._snapshot()
        g = GaugeMetricFamily("edgistry_fault_active", "1 while a fault keeps the gateway unhealthy",
                              labels=["cause"])
        for cause in sorted(causes):
            g.add_metric([cause], 1)
        return [g]


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
        self.faults = Counter("edgistry_faults", "Faults seen (disk full, map full, chain away, writer died)",
                              ["cause"], registry=r)
        self.invoke_latency = Histogram("edgistry_invoke_latency_seconds",
                                        "Invoke: from acceptance to the answer (includes device sleep)",
                                        buckets=LATENCY_BUCKETS, registry=r)

    def watch_queues(self, depths: Callable[[], dict[bytes, int]]) -> None:
        self.registry.register(_QueueCollector(depths))

    def watch_link(self, snapshot: Callable[[], dict]) -> None:
        self.registry.register(_LinkCollector(snapshot))

    def watch_dgram(self, snapshot: Callable[[], dict]) -> None:
        self.registry.register(_DgramCollector(snapshot))

    def watch_admission(self, snapshot: Callable[[], dict]) -> None:
        self.registry.register(_AdmissionCollector(snapshot))

    def watch_health(self, snapshot: Callable[[], dict[str, str]]) -> None:
        self.registry.register(_HealthCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
