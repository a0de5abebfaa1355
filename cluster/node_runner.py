"""Running a whole node in one process (``edgistry up``).

Embedded mode: RegistryApp + EmbeddedNode (block producer) + the RPC subset.
CometBFT mode (the home names a CometBFT home): the ABCI server plus a
``cometbft start`` child process. Every background piece is started and
stopped here, in one place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from ..abci_app.app import RegistryApp
from ..abci_app.embedded import EmbeddedNode
from .home import load_genesis_doc
from ..abci_app.rpc import create_app
from ..abci_app.server import AbciServer
from .cometbft import HOW_TO_GET, find_cometbft
from ..aiotasks import cancel_and_wait
from ..clikit import wait_for_signal
from ..config import HomeError, NodeConfig, is_private_listen
from ..gateway.cli import code_line
from ..gc_policy import freeze_startup_objects, tune_gc_for_node
from ..http_guard import ConnectionGuard, GuardedSite

log = logging.getLogger(__name__)

BANNER = (
    "Edgistry embedded single-node mode: ONE node decides every block. There is NO fault tolerance\n"
    "and no replication; use it for development only. For a replicated registry run CometBFT\n"
    "validators beside `edgistry node` (README: \"Running on CometBFT\")."
)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_node(cfg: NodeConfig, announce: Callable[[str], None] = print, demo_devices: int = 0) -> None:
    app = RegistryApp.from_config(cfg)
    try:
        if cfg.cometbft_home:
            await _run_with_cometbft(cfg, app, announce)
        else:
            await _run_embedded(cfg, app, announce, demo_devices)
    finally:
        app.close()


async def _run_embedded(cfg: NodeConfig, app: RegistryApp, announce: Callable[[str], None],
                        demo_devices: int = 0) -> None:
    announce(BANNER)
    # handlers first: a SIGTERM while the gateway starts (it loads the registry's
    # revocations before serving) is a clean shutdown, not a kill
    sig = asyncio.ensure_future(wait_for_signal())
    await asyncio.sleep(0)
    node = EmbeddedNode(app, cfg.embedded_dir, load_genesis_doc(cfg),
                        block_interval_s=cfg.block_interval_ms / 1000,
                        empty_block_interval_s=cfg.empty_block_interval_s)
    node.start()
    guard = ConnectionGuard()
    runner = web.AppRunner(create_app(node, cfg.moniker, guard), access_log=None)
    await runner.setup()
    host, port = _host_port(cfg.rpc_listen)
    try:
        await GuardedSite(runner, host, port, guard, reuse_port=False).start()  # the port is ours alone
    except OSError as exc:
        await node.stop()
        await runner.cleanup()
        raise HomeError(f"cannot listen on {cfg.rpc_listen} for RPC: {exc}") from exc
    announce(f"chain {node.chain_id} at height {app.height}; RPC on http://{host}:{port}")
    gateway, demo_stop, demo_tasks = None, asyncio.Event(), []
    try:
        start = asyncio.ensure_future(_start_gateway(cfg, f"http://{host}:{port}", announce))
        await asyncio.wait({start, sig}, return_when=asyncio.FIRST_COMPLETED)
        if sig.done():  # asked to stop while starting: let the start finish, then stop it
            gateway = await start
            return
        gateway = start.result()
        if demo_devices and gateway is not None:
            from ..gateway.demo import start_demo_devices

            grpc_addr = f"{_host_port(cfg.grpc_listen)[0]}:{gateway.ports['grpc']}"
            demo_tasks = await start_demo_devices(cfg.home, demo_devices, grpc_addr, lambda: gateway.code.code,
                                                  demo_stop, announce, None if gateway.insecure else gateway.tls.pin,
                                                  gateway.pin_flag)
        elif demo_devices:
            announce("demo devices need the gateway, which is not running")
        if gateway is not None:
            announce(ready_lines(cfg, gateway, bool(demo_tasks)))
            # pairings from now on are the user's: each new one-time code is worth a line
            gateway.code.on_rotate = lambda code: announce(code_line(code, gateway.code.path))
        announce(STOP_LINE)
        freeze_startup_objects()  # the gateway's setting (gc_policy.py): its latency tails matter here
        await sig
    finally:
        sig.cancel()
        announce("stopping")
        demo_stop.set()
        await cancel_and_wait(demo_tasks)
        if gateway is not None:
            await gateway.stop()
        await runner.cleanup()
        await node.stop()


STOP_LINE = "running; stop with Ctrl-C (or SIGTERM)"


def ready_lines(cfg: NodeConfig, gateway, demo: bool) -> str:
    """What to try next: an application token, a discovery, and the code for the next pairing."""
    from ..gateway.demo import BASE_LAT, BASE_LON

    grpc_addr = f"{_host_port(cfg.grpc_listen)[0]}:{gateway.ports['grpc']}"
    near = f"{BASE_LAT},{BASE_LON} --radius-km 8" if demo else "LAT,LON --radius-km 5"
    return "\n".join([
        "try discovery (an application token first):",
        f"  edgistry token app --home {cfg.home} --name my-app > app.token",
        f"  edgistry discover sensor --near {near} --gateway {grpc_addr} --token app.token {gateway.pin_flag}",
        f"pair a device: edgistry pair --device DEVICE_HOME --gateway {grpc_addr} --code @{gateway.code.path}"
        + (" --insecure" if gateway.insecure else ""),
        "  (the code is one-time: @FILE reads the current one)",
    ])


async def _start_gateway(cfg: NodeConfig, rpc_url: str, announce: Callable[[str], None]):
    """The node's gateway (gateway/app.py) beside the embedded node. A gateway
    that cannot listen (a port in use) is reported loudly but does not take the
    registry down; ``[gateway] enabled = false`` in config.toml turns it off."""
    if not cfg.extra.get("gateway", {}).get("enabled", True):
        return None
    from ..gateway.app import create_gateway

    gateway = create_gateway(cfg, rpc_url, announce)
    try:
        await gateway.start()
    except OSError as exc:
        announce(f"gateway NOT started: {exc}")
        return None
    return gateway


async def _run_with_cometbft(cfg: NodeConfig, app: RegistryApp, announce: Callable[[str], None]) -> None:
    binary = find_cometbft()
    if binary is None:
        raise HomeError(HOW_TO_GET)
    if not is_private_listen(cfg.abci_listen):  # CometBFT runs beside it: nothing else needs to reach ABCI
        raise HomeError(f"abci_listen {cfg.abci_listen} is not private: use a unix:// socket or a loopback address "
                        "(ABCI has no authentication)")
    server = AbciServer(app)
    await server.start(cfg.abci_listen)
    tune_gc_for_node()
    logfile = open(cfg.home / "cometbft.log", "ab")
    proc = await asyncio.create_subprocess_exec(
        binary, "start", "--home", cfg.cometbft_home, "--proxy_app", cfg.abci_listen,
        stdout=logfile, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    announce(f"ABCI on {cfg.abci_listen}; cometbft (pid {proc.pid}) from {binary}; RPC at {cfg.rpc_url}")
    announce(STOP_LINE)
    try:
        waiter = asyncio.ensure_future(proc.wait())
        sig = asyncio.ensure_future(wait_for_signal())
        await asyncio.wait({waiter, sig}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            announce(f"cometbft exited with status {proc.returncode}; see {cfg.home / 'cometbft.log'}")
        sig.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        logfile.close()
        await server.close()
