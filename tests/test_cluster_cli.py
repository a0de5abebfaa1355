"""`edgistry cluster`: the process launcher, the missing-binary message, the container
project (validated without a Docker engine; tests/test_compose_docker.py runs it), and
up/status/down on a real CometBFT."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgistry
from cluster_helpers import free_base_port
from edgistry.cli import main
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.compose import COMETBFT_IMAGE, ContainerProject
from edgistry.cluster.launcher import Launcher, start_ticks
from edgistry.cluster.localnet import generate_localnet

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


def test_launcher_signals_only_a_process_its_own_record_describes(tmp_path: Path):
    """A record names a process to signal. One planted in the run folder (another user's
    file, or a folder others can write to) or naming a process that runs something else
    (a recycled pid, or a process of ours picked by start time) is never acted on."""
    import json
    import subprocess

    launcher = Launcher(tmp_path)
    rec = launcher.start("sleeper", SLEEP)
    other = subprocess.Popen(["sleep", "30"])  # ours, not the launcher's
    try:
        planted = dict(json.loads(launcher._record_path("sleeper").read_text()), name="planted", pid=other.pid,
                       start_ticks=start_ticks(other.pid))
        launcher._record_path("planted").write_text(json.dumps(planted))
        view = Launcher(tmp_path)  # as `cluster status` and `down` see it: by the records
        assert view.pid("planted") is None  # its argv is not what runs there
        assert view.stop("planted") == "not running" and other.poll() is None
        assert view.pid("sleeper") == rec.pid
        os.chmod(launcher.run_dir, 0o777)  # others could have written any record in it
        assert view.pid("sleeper") is None
        os.chmod(launcher.run_dir, 0o700)
        assert view.pid("sleeper") == rec.pid
        # a wrapper that execs its command (as `ip netns exec` does) leaves only the command
        # in /proc: still the recorded process, still stopped by `cluster down`
        wrapped = launcher.start("wrapped", ["env", *SLEEP])
        deadline = time.monotonic() + 10
        while Path(f"/proc/{wrapped.pid}/cmdline").read_bytes().startswith(b"env\0"):  # until env has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert view.pid("wrapped") == wrapped.pid
        assert view.stop("wrapped", timeout=5).startswith("stopped")
    finally:
        other.kill()
        other.wait()
        launcher.kill("sleeper")
        launcher.kill("wrapped")


def test_launcher_logs_are_private(tmp_path: Path):
    """A process's log holds what it prints (a gateway's announcements among them): the log
    and its directory are the user's alone, also when the directory existed world-readable,
    and a symlink planted at a log's path is not followed."""
    import stat

    launcher = Launcher(tmp_path)
    launcher.log_dir.mkdir(parents=True, mode=0o755)
    os.chmod(launcher.log_dir, 0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    launcher.log_path("planted").symlink_to(elsewhere)
    rec = launcher.start("sleeper", SLEEP)
    try:
        for path in (launcher.log_dir, launcher.run_dir, launcher.log_path("sleeper")):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
        with pytest.raises(OSError):
            launcher.start("planted", SLEEP)
        assert elsewhere.read_text() == ""
    finally:
        launcher.kill("sleeper")
        assert rec.pid > 0


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
    """Per node an abci service (our image, built from the project's own image folder), a node
    service (official cometbft image at a pinned v0.38 tag, its app on the unix socket) and a
    gateway; no top-level `name:`, which Compose v1 rejects."""
    directory, doc = compose
    assert set(doc) == {"services"}
    services = doc["services"]
    expected = {f"{kind}{i}" for i in range(3) for kind in ("abci", "node", "gateway")}
    assert set(services) == expected
    assert COMETBFT_IMAGE.startswith("cometbft/cometbft:v0.38.")
    project = ContainerProject.load(directory)
    assert project.edgistry_image == f"edgistry:{edgistry.__version__}"
    for i in range(3):
        abci, node, gw = services[f"abci{i}"], services[f"node{i}"], services[f"gateway{i}"]
        for svc in (abci, gw):
            assert svc["image"] == project.edgistry_image
            assert svc["build"] == {"context": "./image", "network": "none"}
        assert (directory / "image" / "Dockerfile").is_file()
        assert abci["command"] == ["node", "--home", "/edgistry", "--listen", "unix:///abci/abci.sock"]
        assert node["image"] == COMETBFT_IMAGE and node["entrypoint"] == ["cometbft"]
        assert node["command"] == ["start", "--home", "/cometbft", "--proxy_app", "unix:///abci/abci.sock"]
        assert node["depends_on"] == {f"abci{i}": {"condition": "service_healthy"}}
        assert gw["command"] == ["gateway", "--home", "/edgistry"]
        assert gw["depends_on"] == {f"node{i}": {"condition": "service_healthy"}}
        for name in (f"abci{i}", f"node{i}", f"gateway{i}"):
            assert services[name]["labels"] == {"io.edgistry.project": project.name, "io.edgistry.service": name}


def test_compose_abci_is_private(compose):
    """ABCI is on no network: the app has network_mode none, its socket folder (0700) is mounted
    by that node's app and cometbft only, and no service publishes or listens on 26658."""
    directory, doc = compose
    services = doc["services"]
    for i in range(3):
        assert services[f"abci{i}"]["network_mode"] == "none"
        assert (directory / f"node{i}/abci").stat().st_mode & 0o777 == 0o700
        mounting = {name for name, svc in services.items() if any(v.startswith(f"./node{i}/abci:")
                                                                 for v in svc.get("volumes", []))}
        assert mounting == {f"abci{i}", f"node{i}"}
    assert not any("26658" in port for svc in services.values() for port in svc.get("ports", []))
    assert "26658" not in (directory / "docker-compose.yml").read_text()


def test_compose_ports_volumes_healthchecks(compose):
    """Only RPC and the gateway's gRPC, link and HTTP ports are published, on 127.0.0.1, in the
    localnet scheme without collisions (p2p stays on the project network); homes are
    bind-mounted from existing directories; every service has a healthcheck."""
    directory, doc = compose
    services = doc["services"]
    host_ports = []
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD" and svc["healthcheck"]["retries"] > 0, name
        assert svc["restart"] == "unless-stopped" and svc["init"] is True, name
        assert svc["cap_drop"] == ["ALL"] and svc["security_opt"] == ["no-new-privileges:true"], name
        for volume in svc["volumes"]:
            source, target, *mode = volume.split(":")
            if target == "/edgistry/keys/admin.pem":  # the admin key hidden under an empty read-only file
                assert name in ("abci0", "gateway0") and mode == ["ro"] and (directory / source).read_bytes() == b""
                continue
            assert (directory / source).is_dir() and target in ("/edgistry", "/cometbft", "/abci"), volume
        for port in svc.get("ports", []):
            address, host, _ = port.split(":")
            assert address == "127.0.0.1", port
            host_ports.append(int(host))
    assert len(host_ports) == len(set(host_ports)) == 3 * 4
    assert services["node1"]["ports"] == ["127.0.0.1:26611:26657"]
    assert services["gateway1"]["ports"] == ["127.0.0.1:26613:26670", "127.0.0.1:26614:26671",
                                            "127.0.0.1:26615:26672"]
    assert "ports" not in services["abci1"]
    assert services["node0"]["healthcheck"]["test"][-1] == "http://127.0.0.1:26657/health"
    header = (directory / "docker-compose.yml").read_text().split("services:")[0]
    for port in host_ports:  # every published port is explained in the file
        assert f" {port} -> " in header


def test_compose_image_is_built_from_wheels_offline(compose):
    """The Dockerfile installs Edgistry from the project's wheel folder with --no-index (no
    network, no source tree), on a python base of this interpreter's version; the wheel folder
    holds Edgistry and every runtime dependency; the image label names the wheels' digest."""
    directory, _ = compose
    project = ContainerProject.load(directory)
    dockerfile = (directory / "image" / "Dockerfile").read_text()
    assert dockerfile.startswith("# Edgistry")
    assert f"FROM python:{sys.version_info[0]}.{sys.version_info[1]}-slim-bookworm" in dockerfile
    assert "pip install --no-cache-dir --no-index --find-links /wheels" in dockerfile
    assert "COPY wheels /wheels" in dockerfile and "COPY . " not in dockerfile
    assert f'LABEL io.edgistry.wheels="{project.wheels_digest}"' in dockerfile
    # the build context is the image folder alone: node keys never reach the Docker daemon
    assert sorted(p.name for p in (directory / "image").iterdir()) == ["Dockerfile", "wheels"]
    wheels = {p.name.split("-")[0].lower() for p in (directory / "image" / "wheels").glob("*.whl")}
    assert {"edgistry", "protobuf", "grpcio", "cryptography", "lmdb", "aiohttp", "multidict", "click"} <= wheels
    assert not wheels & {"pytest", "hypothesis", "pyyaml"}  # extras stay out
    assert str(Path(edgistry.__file__).parent) not in (directory / "docker-compose.yml").read_text() + dockerfile


def test_compose_configs_use_service_names(compose):
    """Inside containers CometBFT listens on 0.0.0.0, dials peers by service name and its app on
    the unix socket; the Edgistry homes reach the chain at node{i}, register their gateway as
    gateway{i}:26670 (peers at gateway{i}:26673, with its certificate) and tell devices the
    published link port."""
    directory, _ = compose
    manifest = json.loads((directory / "localnet.json").read_text())
    ids = {n["moniker"]: n["node_id"] for n in manifest["nodes"]}
    for i in range(3):
        cfg = tomllib.loads((directory / f"node{i}/cometbft/config/config.toml").read_text())
        assert cfg["proxy_app"] == "unix:///abci/abci.sock"
        assert cfg["rpc"]["laddr"] == "tcp://0.0.0.0:26657" and cfg["p2p"]["laddr"] == "tcp://0.0.0.0:26656"
        assert sorted(cfg["p2p"]["persistent_peers"].split(",")) == sorted(
            f"{ids[f'node{j}']}@node{j}:26656" for j in range(3) if j != i)
        home = tomllib.loads((directory / f"node{i}/edgistry/config.toml").read_text())
        assert home["abci_listen"] == "unix:///abci/abci.sock" and home["rpc_url"] == f"http://node{i}:26657"
        assert home["gateway"] == {"grpc_advertise": f"gateway{i}:26670", "peer_advertise": f"gateway{i}:26673",
                                   "link_advertise": f"127.0.0.1:{26604 + 10 * i}"}
        assert home["peer_listen"] == "0.0.0.0:26673"
        assert home["snapshot_interval"] == 7
        genesis = json.loads((directory / f"node{i}/cometbft/config/genesis.json").read_text())
        assert {g["endpoint"] for g in genesis["app_state"]["gateways"]} == {f"gateway{j}:26670" for j in range(3)}
        assert {g["peer_endpoint"] for g in genesis["app_state"]["gateways"]} == {f"gateway{j}:26673" for j in range(3)}
        assert all(len(g["tls_cert"]) > 100 for g in genesis["app_state"]["gateways"])
        assert (directory / f"node{i}/edgistry/genesis.json").read_text() == \
            (directory / f"node{i}/cometbft/config/genesis.json").read_text()


def test_compose_refuses_an_existing_project_and_bad_wheel_dirs(compose, tmp_path: Path):
    """A second compose into the same folder, or a --wheel-dir without an edgistry wheel, exits 1
    with a clear message and writes nothing."""
    directory, _ = compose
    before = (directory / "docker-compose.yml").read_text()
    result = CliRunner().invoke(main, ["cluster", "compose", "--nodes", "3", "--dir", str(directory)])
    assert result.exit_code == 1 and "already holds a localnet" in result.output
    assert (directory / "docker-compose.yml").read_text() == before
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = CliRunner().invoke(main, ["cluster", "compose", "--dir", str(tmp_path / "net"), "--wheel-dir", str(empty)])
    assert result.exit_code == 1 and "exactly one edgistry wheel" in result.output
    assert not (tmp_path / "net").exists()


def test_runtime_mismatches_are_refused(compose, tmp_path: Path):
    """`cluster up` without --runtime docker on a container project, --runtime docker on a process
    localnet, and --wheel-dir for processes are refused before anything starts."""
    directory, _ = compose
    result = CliRunner().invoke(main, ["cluster", "up", "--runtime", "processes", "--dir", str(directory)])
    assert result.exit_code == 1 and "holds a container project" in result.output
    generate_localnet(tmp_path / "procs", 1, base_port=free_base_port(10))
    result = CliRunner().invoke(main, ["cluster", "up", "--runtime", "docker", "--dir", str(tmp_path / "procs")])
    assert result.exit_code == 1 and "localnet of processes" in result.output
    result = CliRunner().invoke(main, ["cluster", "up", "--runtime", "processes", "--wheel-dir", str(tmp_path),
                                       "--dir", str(tmp_path / "other")])
    assert result.exit_code == 2 and "--runtime docker" in result.output
    result = CliRunner().invoke(main, ["cluster", "add-node", "--dir", str(directory)])
    assert result.exit_code == 1 and "container project" in result.output


def test_status_without_an_engine_says_so(compose, monkeypatch):
    """`cluster status` of a container project whose Docker engine cannot be reached exits 1
    and says which engine it tried."""
    pytest.importorskip("docker")
    directory, _ = compose
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = CliRunner().invoke(main, ["cluster", "status", "--dir", str(directory)])
    assert result.exit_code == 1 and "cannot reach the Docker engine" in result.output


def test_docker_runtime_creates_what_compose_describes(compose):
    """The Docker runtime's container settings are the compose services': image, command, user,
    bind mounts (absolute), ports on 127.0.0.1, health check in nanoseconds, restart policy,
    labels; the app on no network, the others on the project network."""
    from edgistry.cluster.docker_runtime import Runtime

    directory, doc = compose
    runtime = Runtime(None, directory)
    for name, svc in doc["services"].items():
        kw = runtime.create_kwargs(name)
        assert (kw["image"], kw["command"], kw["user"]) == (svc["image"], svc["command"], svc["user"])
        assert kw["entrypoint"] == svc.get("entrypoint") and kw["labels"] == svc["labels"]
        assert kw["restart_policy"] == {"Name": "unless-stopped"} and kw["init"] is True
        assert kw["volumes"] == {str(directory / v.split(":")[0][2:]): {
            "bind": v.split(":")[1], "mode": (v.split(":")[2:] or ["rw"])[0]} for v in svc["volumes"]}
        assert kw["cap_drop"] == ["ALL"] and kw["security_opt"] == ["no-new-privileges:true"]
        assert kw["ports"] == {f"{p.split(':')[2]}/tcp": ("127.0.0.1", int(p.split(":")[1]))
                               for p in svc.get("ports", [])}
        assert kw["healthcheck"]["interval"] == 2_000_000_000 and kw["healthcheck"]["test"] == svc["healthcheck"]["test"]
        if name.startswith("abci"):
            assert kw["network_mode"] == "none" and "network" not in kw
        else:
            assert kw["network"] == f"{runtime.project.name}-net" and "network_mode" not in kw


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
