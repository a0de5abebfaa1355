"""``edgistry init | up``: creating a node home, and running one whole node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..clikit import UserError, home_option, load_config
from ..config import HomeError
from .home import init_home
from .node_runner import run_node


@click.command("init")
@home_option
@click.option("--chain-id", default=None, help="Chain id (default: edgistry-local, or CometBFT's).")
@click.option("--cometbft-home", type=click.Path(path_type=Path), default=None,
              help="A CometBFT home whose genesis.json gets the registry's app_state.")
@click.option("--moniker", default="node0", show_default=True, help="Human-readable node name.")
@click.option("--rpc-listen", default=None, help="Embedded node RPC HOST:PORT (default 127.0.0.1:26657).")
@click.option("--grpc-listen", default=None, help="Gateway gRPC HOST:PORT, registered on chain (default 127.0.0.1:26670).")
@click.option("--link-listen", default=None, help="Device link HOST:PORT (default 127.0.0.1:26671).")
@click.option("--http-listen", default=None, help="Gateway HTTPS HOST:PORT (default 127.0.0.1:26672).")
@click.option("--peer-listen", default=None, help="Gateway-to-gateway HOST:PORT (default 127.0.0.1:26673).")
def init_cmd(home: Path, chain_id: str | None, cometbft_home: Path | None, moniker: str, rpc_listen: str | None,
             grpc_listen: str | None, link_listen: str | None, http_listen: str | None,
             peer_listen: str | None) -> None:
    """Create a node home: keys (0600; the gateway's TLS key too), config.toml and genesis."""
    listen = {"rpc_listen": rpc_listen, "grpc_listen": grpc_listen, "link_listen": link_listen,
              "http_listen": http_listen, "peer_listen": peer_listen}
    try:
        cfg = init_home(home, chain_id, cometbft_home, moniker, listen)
    except HomeError as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"initialised {cfg.home} (chain {cfg.chain_id})")
    if cfg.cometbft_home:
        click.echo(f"wrote the registry genesis into {cfg.cometbft_home}/config/genesis.json")
        click.echo(f"next: edgistry node --home {cfg.home}")
        click.echo(f"      cometbft start --home {cfg.cometbft_home} --proxy_app {cfg.abci_listen}")
    else:
        click.echo(f"next: edgistry up --home {cfg.home}")



@click.command("up")
@home_option
@click.option("--chain-id", default=None, help="Chain id when the home is created now.")
@click.option("--rpc-listen", default=None, help="Embedded RPC address (default 127.0.0.1:26657).")
@click.option("--grpc-listen", default=None, help="Gateway gRPC address (default 127.0.0.1:26670).")
@click.option("--link-listen", default=None, help="Device link address (default 127.0.0.1:26671).")
@click.option("--http-listen", default=None, help="Gateway HTTPS address (default 127.0.0.1:26672).")
@click.option("--peer-listen", default=None, help="Gateway-to-gateway address (default 127.0.0.1:26673).")
@click.option("--insecure", is_flag=True, default=None,
              help="The gateway serves PLAINTEXT on every port (no TLS): development on a trusted network only.")
@click.option("--demo-devices", type=click.IntRange(0, 1000), default=0,
              help="Start N demo devices (sensor/actuator) paired with this node's gateway.")
def up_cmd(home: Path, chain_id: str | None, rpc_listen: str | None, grpc_listen: str | None,
           link_listen: str | None, http_listen: str | None, peer_listen: str | None, insecure: bool | None,
           demo_devices: int) -> None:
    """Run one whole node: the registry with its block producer and RPC.

    Uses the embedded single-node block producer unless the home names a
    CometBFT home, in which case it serves ABCI and starts cometbft there.
    """
    listen = {"rpc_listen": rpc_listen, "grpc_listen": grpc_listen, "link_listen": link_listen,
              "http_listen": http_listen, "peer_listen": peer_listen}
    if not (home / "config.toml").exists():
        try:
            init_home(home, chain_id, listen=listen)
        except HomeError as exc:
            raise UserError(str(exc)) from exc
        click.echo(f"initialised {home.resolve()}", err=True)
    cfg = load_config(home)
    for name, value in listen.items():  # flags override the config for this run
        if value:
            setattr(cfg, name, value)
    if rpc_listen:
        cfg.rpc_url = "http://" + rpc_listen
    cfg.insecure = bool(insecure) or cfg.insecure
    try:
        asyncio.run(run_node(cfg, announce=lambda m: click.echo(m, err=True), demo_devices=demo_devices))
    except HomeError as exc:
        raise UserError(str(exc)) from exc
