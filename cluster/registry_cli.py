"""``edgistry registry add-gateway | ls``: an operator's view of the replicated registry.

Clients of a node's RPC: they sign with a node home's keys and read committed
state; the registry app itself never sees them. A device's services, cell,
policy and duty cycle are sealed on chain: ``ls devices`` opens them only
with ``--home`` of a gateway that holds the registry data key (its
keys/seal.pem and the wraps on chain); anyone else sees pseudonyms, owners,
epochs and liveness buckets.
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
            "registered_height": g.registered_height, "seal_pubkey": g.seal_pubkey.hex()}


def device_json(d) -> dict:
    """A device record in the CLI's JSON shape: pseudonym and cell in hex, as the table and --cell.
    Fields still sealed (no gateway key opened them) show as ``sealed`` (epoch and size) only."""
    sealed = {"epoch": d.sealed.epoch, "bytes": len(d.sealed.ciphertext)}
    if not d.services:
        return {"pseudonym": d.pseudonym.hex(), "gateway_id": d.gateway_id, "sealed": sealed,
                "last_seen": d.last_seen, "registered_height": d.registered_height}
    return {"pseudonym": d.pseudonym.hex(), "gateway_id": d.gateway_id, "sealed": sealed, "cell": f"{d.cell:x}",
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


@registry_group.command("remove-gateway")
@home_option
@click.option("--gateway-id", required=True, help="Id of the gateway to remove (it must own no device).")
@click.option("--rpc", default=None, help="Node RPC URL (default from the home's config).")
def remove_gateway_cmd(home: Path, gateway_id: str, rpc: str | None) -> None:
    """Remove a gateway (signed by the admin key). If it held the registry data key, the
    remaining gateways open a new epoch and re-seal their devices under it."""
    from .home import admin_key
    from ..chain import ChainClient
    from ..proto import registry_pb2 as pb

    cfg = load_config(home)

    async def go() -> int:
        async with ChainClient(_rpc_url(home, rpc)) as chain:
            return (await chain.submit(admin_key(cfg), pb.RemoveGateway(gateway_id=gateway_id))).height

    click.echo(f"removed gateway {gateway_id} (height {_run(go())})")


@registry_group.command("ls")
@click.argument("what", type=click.Choice(["gateways", "devices"]))
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Node home: its RPC URL and, for devices, its gateway's seal key to open sealed fields.")
@click.option("--rpc", default=None, help="Node RPC URL.")
@click.option("--height", type=int, default=0, help="Read at this height (default: latest).")
@click.option("--service", default=None, help="devices: only this service type (needs a gateway --home).")
@click.option("--cell", default=None, help="devices: only inside this H3 cell, hex (needs a gateway --home).")
@click.option("--gateway-id", default=None, help="devices: only those owned by this gateway.")
@click.option("--json", "as_json", is_flag=True, help="Print records as JSON.")
def ls_cmd(what: str, home: Path | None, rpc: str | None, height: int, service: str | None, cell: str | None,
           gateway_id: str | None, as_json: bool) -> None:
    """List gateways or devices of the registry."""
    from ..chain import ChainClient
    from ..proto import registry_pb2 as pb

    url = _rpc_url(home, rpc)
    try:
        inside = int(cell, 16) if cell else None
    except ValueError as exc:
        raise UserError(f"--cell is not a hex H3 cell: {exc}") from exc

    async def go() -> tuple[list, object]:
        async with ChainClient(url) as chain:
            if what == "gateways":
                return await chain.gateways(height), (None, {})
            ring = await _keyring(chain, home) if home is not None else None
            if (service or inside) and ring is None:
                raise UserError("services and cells are sealed on chain: filtering by them needs --home of a "
                                "gateway that holds the registry data key")
            if gateway_id:
                found = await chain.devices("/devices/by_gateway", pb.DeviceQuery(gateway_id=gateway_id), height)
            else:
                found = await chain.devices("/devices", None, height)
            catalogs = ring.open_catalogs(await chain.manifests(gateway_id, height)) if ring is not None else {}
            return found, (ring, catalogs)

    records, (ring, catalogs) = _run(go())
    if what == "devices":
        records = [_opened(r, ring, catalogs) for r in records]
        if service or inside:
            records = [r for r in records if r.services and _matches(r, service, inside)]
    if as_json:
        echo_json([gateway_json(r) if what == "gateways" else device_json(r) for r in records])
        click.echo(f"{len(records)} {what}", err=True)
        return
    if what == "gateways":
        click.echo(f"{'GATEWAY ID':32}  {'ENDPOINT':24}  {'SEAL KEY':8}  OPERATOR")
        for g in records:
            click.echo(f"{g.id:32}  {g.endpoint:24}  {'yes' if g.seal_pubkey else 'no':8}  {g.operator}")
    else:
        click.echo(f"{'PSEUDONYM':32}  {'GATEWAY':32}  {'EPOCH':5}  {'CELL':15}  SERVICES")
        for d in records:
            if d.services:
                cell_text, services = f"{d.cell:015x}", ",".join(s.type for s in d.services)
            else:
                cell_text, services = "sealed", "sealed"
            click.echo(f"{d.pseudonym.hex():32}  {d.gateway_id:32}  {d.sealed.epoch:5}  {cell_text:15}  {services}")
    click.echo(f"{len(records)} {what}", err=True)


async def _keyring(chain, home: Path):
    """The registry data keys this home's gateway holds (None when it holds none or has no seal key)."""
    from ..abci_app.txs import gateway_id_for
    from ..gateway.discovery.sealbox import Keyring, load_seal_key
    from ..proto import registry_pb2 as pb
    from .home import gateway_key

    cfg = load_config(home)
    seal = load_seal_key(cfg.keys_dir)
    if seal is None:
        return None
    state = await chain.query_msg("/seal", pb.SealState)
    ring = Keyring.from_state(state, gateway_id_for(public_bytes(gateway_key(cfg))), seal)
    return ring if ring.keys else None


def _opened(record, ring, catalogs=None):
    """The record with its sealed fields opened when ``ring`` holds their epoch (services from
    its gateway's catalog when it names a slot); else as on chain."""
    from ..gateway.discovery.sealbox import SealError

    if ring is None:
        return record
    try:
        return ring.open_record(record, catalogs)
    except SealError:
        return record


def _matches(record, service: str | None, inside: int | None) -> bool:
    import h3

    if service and service not in {s.type for s in record.services}:
        return False
    if inside:
        res = h3.get_resolution(h3.int_to_str(inside))
        cell = h3.int_to_str(record.cell)
        if h3.get_resolution(cell) < res or h3.cell_to_parent(cell, res) != h3.int_to_str(inside):
            return False
    return True
