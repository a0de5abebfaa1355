"""`edgistry cluster`: the process launcher, the missing-binary message, the Compose
project (validated without a Docker engine), and up/status/down on a real CometBFT."""

from __future__ import annotations

import json
import os
import signal
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster_helpers import free_base_port
from edgistry.cli import main
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.compose import COMETBFT_IMAGE, EDGISTRY_IMAGE
from edgistry.cluster.launcher import Launcher, start_ticks

yaml = pytest.importorskip("yaml")
BINARY = find_cometbft()
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ---- launcher ----


def test_launcher_records_signals_and_stops_by_pid(tmp_path: Path):
    """A started process is recorded with its pid and start time, found alive by a second
    Launcher (as `cluster status` would), paused and resumed, and stopped by SIGTERM."""
    first = Launcher(tmp_path)
    rec = first.start("sleeper", SLEEP)
    try:
        assert rec.pid > 0 and rec.start_ticks == start_ticks(rec.pid)
        other = Launcher(tmp_path)
        assert other.pid("sleeper") == rec.pid
        assert other.send("sleeper", signal.SIGSTOP) and other.send("sleeper", signal.SIGCONT)
        assert other.stop("sleeper", timeout=5).startswith("stopped")
        assert not first.alive("sleeper") and other.record("sleeper") is None
        assert "start:" in first.log_path("sleeper").read_text()
    finally:
        first.kill("sleeper")


def test_launcher_ignores_a_recycled_pid(tmp_path: Path):
    """A record whose pid now belongs to another process (different start time) is not
    running, and stopping it signals nothing."""
    launcher = Launcher(tmp_path)
    launcher.run_dir.mkdir(parents=True)
    me = os.getpid()
    (launcher.run_dir / "ghost.json").write_text(json.dumps(
        {"name": "ghost", "pid": me, "start_ticks": (start_ticks(me) or 0) + 1, "argv": [], "log": "logs/ghost.log"}))
    assert not launcher.alive("ghost")
    assert launcher.stop("ghost") == "not running"  # and this test process is still here


def test_launcher_escalates_to_sigkill(tmp_path: Path):
    """A process that ignores SIGTERM is killed after the bounded wait."""
    launcher = Launcher(tmp_path)
    launcher.start("stubborn", [sys.executable, "-c",
                                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('rea' + 'dy', flush=True); time.sleep(60)"])
    try:
        import time
        deadline = time.monotonic() + 10
        while "\nready" not in launcher.log_path("stubborn").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.stop("stubborn", timeout=0.5).startswith("killed")
    finally:
        launcher.kill("stubborn")


# ---- without cometbft ----


@pytest.mark.parametrize("command", [["up", "--nodes", "2"], ["add-node"]])
def test_missing_cometbft_says_how_to_get_one(tmp_path: Path, monkeypatch, command):
    """With no binary, `cluster up` and `add-node` print HOW_TO_GET and exit 1."""
    monkeypatch.setenv("EDGISTRY_COMETBFT", str(tmp_path / "no-such-cometbft"))
    result = CliRunner().invoke(main, ["cluster", *command, "--dir", str(tmp_path / "net")])
    assert result.exit_code == 1
    assert HOW_TO_GET in result.output
    assert not (tmp_path / "net").exists()


# ---- compose ----


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compose")
    result = invoke("cluster", "compose", "--nodes", "3", "--dir", str(directory), "--snapshot-interval", "7")
    assert result.exit_code == 0, result.output
    return directory, yaml.safe_load((directory / "docker-compose.yml").read_text())


def test_compose_services_images_commands(compose):
    """Per node an abci service (our image) and a node service (official cometbft image at a
    pinned v0.38 tag, proxy_app by service name) and a gateway."""
    directory, doc = compose
    services = doc["services"]
    expected = {f"{kind}{i}" for i in range(3) for kind in ("abci", "node", "gateway")}
    assert set(services) == expected
    assert COMETBFT_IMAGE.startswith("cometbft/cometbft:v0.38.")
    for i in range(3):
        abci, node = services[f"abci{i}"], services[f"node{i}"]
        assert abci["image"] == EDGISTRY_IMAGE
        assert Path(abci["build"]["dockerfile"]) == directory / "Dockerfile"
        assert (Path(abci["build"]["context"]) / "pyproject.toml").exists()
        assert abci["command"] == ["node", "--home", "/edgistry", "--listen", "tcp://0.0.0.0:26658"]
        assert node["image"] == COMETBFT_IMAGE and node["entrypoint"] == ["cometbft"]
        assert node["command"] == ["start", "--home", "/cometbft", "--proxy_app", f"tcp://abci{i}:26658"]
        assert node["depends_on"] == {f"abci{i}": {"condition": "service_healthy"}}
        if f"gateway{i}" in services:
            gw = services[f"gateway{i}"]
            assert gw["command"] == ["gateway", "--home", "/edgistry"]
            assert gw["depends_on"] == {f"node{i}": {"condition": "service_healthy"}}


def test_compose_ports_volumes_healthchecks(compose):
    """Host ports follow the localnet scheme without collisions; homes are bind-mounted
    from existing directories; every service has a healthcheck."""
    directory, doc = compose
    services = doc["services"]
    host_ports = []
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD" and svc["healthcheck"]["retries"] > 0, name
        for volume in svc["volumes"]:
            source, target = volume.split(":")
            assert (directory / source).is_dir() and target in ("/edgistry", "/cometbft"), volume
        host_ports += [int(p.split(":")[-2]) for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))
    assert services["node1"]["ports"] == ["26610:26656", "127.0.0.1:26611:26657"]
    assert services["node0"]["healthcheck"]["test"][-1] == "http://127.0.0.1:26657/health"
    dockerfile = (directory / "Dockerfile").read_text()
    assert dockerfile.startswith("# Edgistry") and "FROM python:3.11-slim" in dockerfile
    assert "pip install" in dockerfile


def test_compose_configs_use_service_names(compose):
    """Inside containers CometBFT listens on 0.0.0.0, dials peers by service name and its
    app at abci{i}; the Edgistry homes listen on 0.0.0.0 and reach the chain at node{i}."""
    directory, _ = compose
    manifest = json.loads((directory / "localnet.json").read_text())
    ids = {n["moniker"]: n["node_id"] for n in manifest["nodes"]}
    for i in range(3):
        cfg = tomllib.loads((directory / f"node{i}/cometbft/config/config.toml").read_text())
        assert cfg["proxy_app"] == f"tcp://abci{i}:26658"
        assert cfg["rpc"]["laddr"] == "tcp://0.0.0.0:26657" and cfg["p2p"]["laddr"] == "tcp://0.0.0.0:26656"
        assert sorted(cfg["p2p"]["persistent_peers"].split(",")) == sorted(
            f"{ids[f'node{j}']}@node{j}:26656" for j in range(3) if j != i)
        home = tomllib.loads((directory / f"node{i}/edgistry/config.toml").read_text())
        assert home["abci_listen"] == "tcp://0.0.0.0:26658" and home["rpc_url"] == f"http://node{i}:26657"
        assert home["snapshot_interval"] == 7
        genesis = json.loads((directory / f"node{i}/cometbft/config/genesis.json").read_text())
        assert {g["endpoint"] for g in genesis["app_state"]["gateways"]} == {f"gateway{j}:26670" for j in range(3)}
        assert (directory / f"node{i}/edgistry/genesis.json").read_text() == \
            (directory / f"node{i}/cometbft/config/genesis.json").read_text()


# ---- up / status / down on a real CometBFT ----


@pytest.mark.cometbft
@pytest.mark.slow
@pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET)
def test_up_status_down_and_resume(tmp_path: Path):
    """`cluster up` starts and agrees, `status --json` shows every process and the peers,
    a killed app is reported dead (by pid) and `up` again resumes it; `down` stops all."""
    directory = tmp_path / "net"
    base = str(free_base_port(30))
    try:
        result = invoke("cluster", "up", "--nodes", "3", "--dir", str(directory), "--fast", "--base-port", base,
                        "--wait", "90")
        assert result.exit_code == 0, result.output
        assert "3 nodes agree at height" in result.stdout
        for i in range(3):
            assert f"node{i}: RPC http://127.0.0.1:{int(base) + 10 * i + 1}" in result.stdout
        status = json.loads(invoke("cluster", "status", "--dir", str(directory), "--json").stdout)
        assert [n["node"] for n in status["nodes"]] == ["node0", "node1", "node2"]
        for n in status["nodes"]:
            assert all(p["running"] for p in n["processes"].values())
            assert len(n["peers"]) == 2 and n["height"] >= 2
            if "gateway" in n:
                assert n["gateway"]["healthy"], n["gateway"]
        assert status["agreement"]["agree"]

        victim = Launcher(directory)
        os.kill(victim.pid("node1-app"), signal.SIGKILL)
        assert victim.wait_exit("node1-app", 10) and victim.wait_exit("node1-cmt", 30)  # cometbft exits 0: by pid
        status = json.loads(invoke("cluster", "status", "--dir", str(directory), "--json").stdout)
        node1 = status["nodes"][1]
        assert not node1["processes"]["app"]["running"] and not node1["processes"]["cmt"]["running"]
        assert node1["height"] is None
        text = invoke("cluster", "status", "--dir", str(directory)).stdout
        assert "node1: app:DOWN cmt:DOWN" in text

        result = invoke("cluster", "up", "--dir", str(directory), "--wait", "90")
        assert result.exit_code == 0, result.output
        status = json.loads(invoke("cluster", "status", "--dir", str(directory), "--json").stdout)
        assert all(p["running"] for n in status["nodes"] for p in n["processes"].values())
    finally:
        result = invoke("cluster", "down", "--dir", str(directory))
    assert result.exit_code == 0, result.output
    assert Launcher(directory).records() == []
