"""``edgistry registry add-gateway | ls``: an operator's view of the replicated registry.

Clients of a node's RPC: they sign with a node home's keys and read committed
state; the registry app itself never sees them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..clikit import UserError, echo_json, home_option, load_config, one_line
from ..config import public_bytes


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
        hint = "; is the node running? (check --rpc, or the home's rpc_url)" if "cannot reach" in str(exc) else ""
        raise UserError(one_line(f"{exc}{hint}")) from exc


def gateway_json(g) -> dict:
    """A gateway record in the CLI's JSON shape (keys and ids in hex)."""
    return {"id": g.id, "pubkey": g.pubkey.hex(), "endpoint": g.endpoint, "operator": g.operator,
            "registered_height": g.registered_height}


def device_json(d) -> dict:
    """A device record in the CLI's JSON shape: pseudonym and cell in hex, as the table and --cell."""
    return {"pseudonym": d.pseudonym.hex(), "gateway_id": d.gateway_id, "cell": f"{d.cell:x}",
            "services": [{"type": s.type, "methods": [{"name": m.name, "cache_max_age_s": m.cache_max_age_s,
                                                   "mutating": m.mutating} for m in s.methods]}
                         for s in d.services],
            "policy": {"resolution": d.policy.resolution, "k": d.policy.k},
            "duty_cycle_s": d.duty_cycle_s, "last_seen": d.last_seen, "registered_height": d.registered_height}


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
    from .home import admin_key, gateway_key
    from ..abci_app.txs import gateway_id_for
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
        echo_json({"gateway_id": gid, "action": action, "height": height, "endpoint": endpoint})
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
        echo_json([gateway_json(r) if what == "gateways" else device_json(r) for r in records])
        click.echo(f"{len(records)} {what}", err=True)
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
