"""``edgistry pair``: pair a device home with a gateway (or unpair it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from ...clikit import UserError
from .client import DEFAULT_K, DEFAULT_RESOLUTION, PairError, pair_device


@click.command("pair")
@click.option("--device", "device_home", type=click.Path(path_type=Path), required=True,
              help="The device home (made by `edgistry device init`).")
@click.option("--gateway", required=True, help="HOST:PORT of the gateway's gRPC front end.")
@click.option("--resolution", type=click.IntRange(0, 15), default=DEFAULT_RESOLUTION, show_default=True,
              help="H3 resolution at which the device may be found.")
@click.option("--k", type=click.IntRange(1, 10_000), default=DEFAULT_K, show_default=True,
              help="Minimum anonymity set: devices sharing a cell before any is disclosed.")
@click.option("--code", default=None, help="The gateway's one-time commissioning code (its log, <home>/commission.code).")
@click.option("--unpair", is_flag=True, help="Unpair the device from this gateway instead.")
@click.option("--expect-gateway", default=None, help="Refuse unless the gateway has this id.")
@click.option("--rpc", default=None,
              help="A node RPC URL: refuse unless the gateway's key is the one the registry holds for it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pair_cmd(device_home: Path, gateway: str, resolution: int, k: int, code: str | None, unpair: bool,
             expect_gateway: str | None, rpc: str | None, as_json: bool) -> None:
    """Pair a device with a gateway (or unpair it) over the one-time commissioning channel.

    Writes paired.json (link endpoint, identity token, pseudonym, gateway id)
    into the device home and a read-only application token file beside it.
    """
    if not unpair and not code:
        raise UserError("give --code: the gateway prints its one-time commissioning code at start "
                        "(also in <gateway home>/commission.code)")
    try:
        out = asyncio.run(pair_device(device_home, gateway, code or "", resolution, k, unpair, expect_gateway, rpc))
    except PairError as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(out))
    elif unpair:
        click.echo(f"unpaired {out['pseudonym']} from gateway {out['gateway_id']}")
    else:
        click.echo(f"paired with gateway {out['gateway_id']} (registry height {out['height']})")
        click.echo(f"pseudonym     {out['pseudonym']}")
        click.echo(f"owner handle  {out['owner_handle']}")
        click.echo(f"app token     {out['app_token_file'] or '(none: the device has no read-only method)'}")
        click.echo(f"device link   {out['link_endpoint']}")
