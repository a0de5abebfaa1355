"""``edgistry init | node | up | registry``: running the replicated registry."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import click

from ..cli import UserError
from ..config import HomeError, NodeConfig, public_bytes

log = logging.getLogger("edgistry")

home_option = click.option("--home", type=click.Path(path_type=Path), required=True, help="Node home directory.")


def load_config(home: Path) -> NodeConfig:
    try:
        return NodeConfig.load(home)
    except HomeError as exc:
        raise UserError(str(exc)) from exc


@click.command("init")
@home_option
@click.option("--chain-id", default=None, help="Chain id (default: edgistry-local, or CometBFT's).")
@click.option("--cometbft-home", type=click.Path(path_type=Path), default=None,
              help="A CometBFT home whose genesis.json gets the registry's app_state.")
@click.option("--moniker", default="node0", show_default=True, help="Human-readable node name.")
@click.option("--rpc-listen", default=None, help="Embedded node RPC HOST:PORT (default 127.0.0.1:26657).")
@click.option("--grpc-listen", default=None, help="Gateway gRPC HOST:PORT, registered on chain (default 127.0.0.1:26670).")
@click.option("--link-listen", default=None, help="Device link HOST:PORT (default 127.0.0.1:26671).")
@click.option("--http-listen", default=None, help="Gateway HTTP HOST:PORT (default 127.0.0.1:26672).")
def init_cmd(home: Path, chain_id: str | None, cometbft_home: Path | None, moniker: str, rpc_listen: str | None,
             grpc_listen: str | None, link_listen: str | None, http_listen: str | None) -> None:
    """Create a node home: keys (0600), config.toml and genesis."""
    from ..cluster.home import init_home

    listen = {"rpc_listen": rpc_listen, "grpc_listen": grpc_listen, "link_listen": link_listen,
              "http_listen": http_listen}
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


def _open_app(cfg: NodeConfig):
    from .app import RegistryApp

    try:
        return RegistryApp.from_config(cfg)
    except Exception as exc:  # lmdb.Error and friends: the store is unusable
        raise UserError(f"cannot open the registry store in {cfg.registry_dir}: {exc}") from exc


@click.command("node")
@home_option
@click.option("--listen", default=None, help="ABCI listen address (default from config: tcp://127.0.0.1:26658).")
def node_cmd(home: Path, listen: str | None) -> None:
    """Serve the registry app over ABCI for an external cometbft."""
    from ..cluster.node_runner import wait_for_signal
    from .server import AbciServer
    from ..gc_policy import tune_gc_for_node

    cfg = load_config(home)
    app = _open_app(cfg)
    profile = _start_profile(app)
    tune_gc_for_node()

    async def main() -> None:
        server = AbciServer(profile.app if profile is not None else app)
        try:
            addrs = await server.start(listen or cfg.abci_listen)
        except OSError as exc:
            raise UserError(f"cannot listen on {listen or cfg.abci_listen}: {exc}") from exc
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


@click.command("up")
@home_option
@click.option("--chain-id", default=None, help="Chain id when the home is created now.")
@click.option("--rpc-listen", default=None, help="Embedded RPC address (default 127.0.0.1:26657).")
@click.option("--grpc-listen", default=None, help="Gateway gRPC address (default 127.0.0.1:26670).")
@click.option("--link-listen", default=None, help="Device link address (default 127.0.0.1:26671).")
@click.option("--http-listen", default=None, help="Gateway HTTP address (default 127.0.0.1:26672).")
@click.option("--demo-devices", type=click.IntRange(0, 1000), default=0,
              help="Start N demo devices (sensor/actuator) paired with this node's gateway.")
def up_cmd(home: Path, chain_id: str | None, rpc_listen: str | None, grpc_listen: str | None,
           link_listen: str | None, http_listen: str | None, demo_devices: int) -> None:
    """Run one whole node: the registry with its block producer and RPC.

    Uses the embedded single-node block producer unless the home names a
    CometBFT home, in which case it serves ABCI and starts cometbft there.
    """
    from ..cluster.home import init_home

    listen = {"rpc_listen": rpc_listen, "grpc_listen": grpc_listen, "link_listen": link_listen,
              "http_listen": http_listen}
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
    from ..cluster.node_runner import run_node

    try:
        asyncio.run(run_node(cfg, announce=lambda m: click.echo(m, err=True), demo_devices=demo_devices))
    except HomeError as exc:
        raise UserError(str(exc)) from exc


# ---- registry ----


@click.group("registry")
def registry_group() -> None:
    """Read and change the replicated registry."""


def _rpc_url(home: Path | None, rpc: str | None) -> str:
    if rpc:
        return rpc
    if home is None:
        raise click.UsageError("give --home or --rpc")
    return load_config(home).rpc_url


def _run(coro):
    from ..chain import ChainError

    try:
        return asyncio.run(coro)
    except ChainError as exc:
        raise UserError(str(exc)) from exc


@registry_group.command("add-gateway")
@home_option
@click.option("--endpoint", required=True, help="HOST:PORT of the gateway's gRPC front end.")
@click.option("--pubkey", default=None, help="Hex Ed25519 key of another gateway (default: this home's).")
@click.option("--operator", default=None, help="Operator name (default: the node's moniker).")
@click.option("--rpc", default=None, help="Node RPC URL (default from the home's config).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def add_gateway_cmd(home: Path, endpoint: str, pubkey: str | None, operator: str | None, rpc: str | None,
                    as_json: bool) -> None:
    """Register a gateway (signed by the admin key), or update this home's gateway endpoint."""
    from ..cluster.home import admin_key, gateway_key
    from .txs import gateway_id_for
    from ..chain import ChainClient
    from ..proto import registry_pb2 as pb

    cfg = load_config(home)
    own = gateway_key(cfg)
    try:
        key_bytes = bytes.fromhex(pubkey) if pubkey else public_bytes(own)
    except ValueError as exc:
        raise UserError(f"--pubkey is not hex: {exc}") from exc
    gid = gateway_id_for(key_bytes)
    operator = operator if operator is not None else cfg.moniker

    async def go() -> tuple[str, int]:
        async with ChainClient(_rpc_url(home, rpc)) as chain:
            existing = await chain.query("/gateway", gid.encode())
            if existing.code == 0:
                if key_bytes != public_bytes(own):
                    raise UserError(f"gateway {gid} is already registered")
                done = await chain.submit(own, pb.UpdateGateway(endpoint=endpoint, operator=operator))
                return "updated", done.height
            msg = pb.RegisterGateway(pubkey=key_bytes, endpoint=endpoint, operator=operator)
            done = await chain.submit(admin_key(cfg), msg)
            return "registered", done.height

    action, height = _run(go())
    if as_json:
        click.echo(json.dumps({"gateway_id": gid, "action": action, "height": height, "endpoint": endpoint}))
    else:
        click.echo(f"{action} gateway {gid} at {endpoint} (height {height})")


@registry_group.command("ls")
@click.argument("what", type=click.Choice(["gateways", "devices"]))
@click.option("--home", type=click.Path(path_type=Path), default=None, help="Node home (for its RPC URL).")
@click.option("--rpc", default=None, help="Node RPC URL.")
@click.option("--height", type=int, default=0, help="Read at this height (default: latest).")
@click.option("--service", default=None, help="devices: only this service type (with --cell).")
@click.option("--cell", default=None, help="devices: only inside this H3 cell (hex).")
@click.option("--gateway-id", default=None, help="devices: only those owned by this gateway.")
@click.option("--json", "as_json", is_flag=True, help="Print records as JSON.")
def ls_cmd(what: str, home: Path | None, rpc: str | None, height: int, service: str | None, cell: str | None,
           gateway_id: str | None, as_json: bool) -> None:
    """List gateways or devices of the registry."""
    from google.protobuf import json_format

    from ..chain import ChainClient
    from ..proto import registry_pb2 as pb

    url = _rpc_url(home, rpc)

    async def go() -> list:
        async with ChainClient(url) as chain:
            if what == "gateways":
                return await chain.gateways(height)
            if service:
                try:
                    q = pb.DeviceQuery(service_type=service, cell=int(cell, 16) if cell else 0)
                except ValueError as exc:
                    raise UserError(f"--cell is not a hex H3 cell: {exc}") from exc
                return await chain.devices("/devices/by_cell", q, height)
            if gateway_id:
                return await chain.devices("/devices/by_gateway", pb.DeviceQuery(gateway_id=gateway_id), height)
            return await chain.devices("/devices", None, height)

    records = _run(go())
    if as_json:
        click.echo(json.dumps([json_format.MessageToDict(r, preserving_proto_field_name=True) for r in records], indent=2))
        return
    if what == "gateways":
        click.echo(f"{'GATEWAY ID':32}  {'ENDPOINT':24}  OPERATOR")
        for g in records:
            click.echo(f"{g.id:32}  {g.endpoint:24}  {g.operator}")
    else:
        click.echo(f"{'PSEUDONYM':32}  {'GATEWAY':32}  {'CELL':15}  SERVICES")
        for d in records:
            services = ",".join(s.type for s in d.services)
            click.echo(f"{d.pseudonym.hex():32}  {d.gateway_id:32}  {d.cell:015x}  {services}")
    click.echo(f"{len(records)} {what}", err=True)
