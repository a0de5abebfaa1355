"""``edgistry node``: serve the registry app over ABCI for an external CometBFT."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from ..clikit import UserError, home_option, load_config, wait_for_signal
from ..config import NodeConfig, is_private_listen

log = logging.getLogger("edgistry")

def _open_app(cfg: NodeConfig):
    from .app import RegistryApp

    try:
        return RegistryApp.from_config(cfg)
    except Exception as exc:  # lmdb.Error and friends: the store is unusable
        raise UserError(f"cannot open the registry store in {cfg.registry_dir}: {exc}") from exc


@click.command("node")
@home_option
@click.option("--listen", default=None,
              help="ABCI listen address: tcp://127.0.0.1:PORT or unix://PATH (default from config: "
                   "tcp://127.0.0.1:26658).")
@click.option("--public-abci", is_flag=True,
              help="Allow a non-loopback TCP address: ABCI has no authentication, whoever reaches it "
                   "drives the registry. Only behind a network that admits CometBFT alone.")
def node_cmd(home: Path, listen: str | None, public_abci: bool) -> None:
    """Serve the registry app over ABCI for an external cometbft."""
    from .server import AbciServer
    from ..gc_policy import tune_gc_for_node

    cfg = load_config(home)
    address = listen or cfg.abci_listen
    if not is_private_listen(address):
        if not public_abci:
            raise UserError(f"refusing to serve ABCI on {address}: ABCI has no authentication; use a unix:// "
                            "socket or a loopback address (or --public-abci on a network only CometBFT reaches)")
        log.warning("ABCI on %s is reachable beyond this host: anyone who connects drives the registry", address)
    app = _open_app(cfg)
    profile = _start_profile(app)
    tune_gc_for_node()

    async def main() -> None:
        server = AbciServer(profile.app if profile is not None else app)
        try:
            addrs = await server.start(address)
        except OSError as exc:
            raise UserError(f"cannot listen on {address}: {exc}") from exc
        click.echo(f"serving ABCI on {', '.join(addrs)} at height {app.height}", err=True)
        try:
            await wait_for_signal()
        finally:
            await server.close()

    try:
        asyncio.run(main())
    finally:
        app.close()
        if profile is not None:
            profile.dump()


def _start_profile(app):
    """``EDGISTRY_PROFILE=PREFIX`` (benchmarks): CPU seconds by ABCI method and the
    process's total go to ``PREFIX.PID.json`` at exit; with ``EDGISTRY_CPROFILE=1``
    also cProfile stats to ``PREFIX.PID.prof``."""
    import os

    prefix = os.environ.get("EDGISTRY_PROFILE")
    if not prefix:
        return None
    from .profiling import MethodProfile

    return MethodProfile(app, prefix, cprofile=os.environ.get("EDGISTRY_CPROFILE") == "1")


# ---- registry ----
