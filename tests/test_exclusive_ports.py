"""Every listening port is exclusive: a second server on a taken port fails with
"address already in use" instead of sharing it (gRPC's SO_REUSEPORT would let clients reach
either server at random); ABCI stays on loopback or a unix socket."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgistry.abci_app.server import AbciServer
from edgistry.cli import main
from edgistry.config import is_private_listen
from edgistry.gateway.app import create_gateway
from gateway_helpers import node_home
from proc_helpers import edgistry, stop, wait_for_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
IN_USE = "address already in use"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One whole node (embedded RPC and gateway) holding its ports."""
    root = tmp_path_factory.mktemp("ports")
    cfg, ports = node_home(root / "a")
    proc = edgistry("up", "--home", str(cfg.home), log=root / "a.log")
    try:
        for name in ("grpc", "peer", "http", "link", "rpc"):
            wait_for_port(ports[name], proc=proc, timeout=30)
        yield cfg, ports, root
    finally:
        stop(proc)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgistry", *args], capture_output=True, text=True, timeout=timeout)


def test_a_second_gateway_process_on_the_grpc_port_exits(running, tmp_path):
    """`edgistry gateway` on a taken gRPC port exits 1 saying the address is in use."""
    cfg, ports, _ = running
    other, _ = node_home(tmp_path / "b")
    out = run_cli("gateway", "--home", str(other.home), "--rpc", cfg.rpc_url,
                  "--grpc-listen", f"127.0.0.1:{ports['grpc']}")
    assert out.returncode == 1, out.stdout + out.stderr
    assert IN_USE in out.stderr and f"127.0.0.1:{ports['grpc']}" in out.stderr


@pytest.mark.parametrize("port", ["grpc", "peer", "http", "link"])
async def test_a_second_gateway_on_any_taken_port_fails_to_start(running, tmp_path, port):
    """A gateway whose gRPC, peer, HTTP or device-link port is taken does not start, and says which."""
    cfg, ports, _ = running
    other, _ = node_home(tmp_path / "b")
    setattr(other, f"{port}_listen", f"127.0.0.1:{ports[port]}")
    gateway = create_gateway(other, cfg.rpc_url, announce=lambda _: None)
    with pytest.raises(OSError) as err:
        await gateway.start()
    assert IN_USE in str(err.value).lower() and str(ports[port]) in str(err.value)
    assert gateway.store is None  # start undid itself


def test_a_second_node_on_the_rpc_port_exits(running, tmp_path):
    """`edgistry up` whose embedded RPC port is taken exits 1 saying the address is in use."""
    cfg, ports, _ = running
    other, _ = node_home(tmp_path / "c")
    out = run_cli("up", "--home", str(other.home), "--rpc-listen", f"127.0.0.1:{ports['rpc']}")
    assert out.returncode == 1, out.stdout + out.stderr
    assert IN_USE in out.stderr.lower() and "for RPC" in out.stderr


async def test_a_second_abci_server_on_a_tcp_port_fails():
    """Two ABCI servers on one TCP port: the second fails."""
    first = AbciServer(app=None)
    addrs = await first.start("tcp://127.0.0.1:0")
    try:
        with pytest.raises(OSError) as err:
            await AbciServer(app=None).start(addrs[0])
        assert IN_USE in str(err.value).lower()
    finally:
        await first.close()


async def test_a_second_abci_server_on_a_live_unix_socket_fails_and_a_stale_one_is_replaced(tmp_path):
    """asyncio would replace a live server's socket file: the second server refuses instead;
    a socket file nobody answers on (a crashed server's) is taken over."""
    path = f"unix://{tmp_path}/abci.sock"
    first = AbciServer(app=None)
    await first.start(path)
    try:
        with pytest.raises(OSError) as err:
            await AbciServer(app=None).start(path)
        assert IN_USE in str(err.value).lower()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "abci.sock"))  # still the first's
        writer.close()
    finally:
        await first.close()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # a file with no listener behind it
    s.close()
    second = AbciServer(app=None)
    await second.start(f"unix://{stale}")
    await second.close()


@pytest.mark.parametrize("address, private", [
    ("tcp://127.0.0.1:26658", True), ("tcp://[::1]:26658", True), ("tcp://localhost:26658", True),
    ("unix:///run/abci.sock", True), ("tcp://0.0.0.0:26658", False), ("tcp://10.0.0.5:26658", False),
    ("tcp://abci0:26658", False), ("tcp://[::]:26658", False),
])
def test_which_abci_addresses_are_private(address, private):
    """Loopback and unix sockets are private; wildcard, LAN and named hosts are not."""
    assert is_private_listen(address) is private


def test_abci_on_a_public_address_is_refused_without_the_flag(tmp_path):
    """`edgistry node --listen tcp://0.0.0.0:P` refuses (ABCI has no authentication) unless --public-abci."""
    cfg, _ = node_home(tmp_path / "n")
    res = CliRunner().invoke(main, ["node", "--home", str(cfg.home), "--listen", "tcp://0.0.0.0:1"])
    assert res.exit_code == 1 and "refusing to serve ABCI on tcp://0.0.0.0:1" in res.output
