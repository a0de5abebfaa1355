"""benchmarks/invoke.py runs end to end at a small size on both device links: a real
gateway process (gRPC, the LMDB store with its writer process, the TCP or datagram link),
the simulated devices, and mosquitto beside it; every queued request is delivered and
answered (the benchmark asserts it), and the RESULT line says which link was measured.

At this size each device wakes ~25 times a second in the latency phase, above the
datagram link's per-source rate limit: the dropped datagrams are sent again after the
firmware's timeouts (and counted), so no wake fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "invoke.py"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("link", ["tcp", "udp"])
def test_invoke_benchmark_delivers_everything_on_either_link(link: str) -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto not installed (apt-get install mosquitto; .ci/run installs it)")
    out = subprocess.run([sys.executable, str(BENCH), "--devices", "12", "--per-device", "3", "--rounds", "1",
                          "--latency-s", "1", "--no-rabbitmq", "--link", link],
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["device_link"] == link and result["messages"] == 36
    assert result["gateway"]["drain_per_s"] > 0 and result["mosquitto"]["msgs_per_s"] > 0
    lat = result["latency_at_half_peak"]
    assert lat["errors"] == 0 and lat["submit_rpc_p50_ms"] > 0
    assert (lat["established_to_requests_p99_ms"] is None) == (link == "udp")
    assert (lat["datagrams_resent"] is None) == (link == "tcp")
