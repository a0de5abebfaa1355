"""``edgistry discover`` and the ``--any`` path of ``edgistry invoke`` (gRPC clients)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
import grpc
from ...clikit import UserError
from .core import Latency
from ...proto import discovery_pb2 as dpb
from ...proto import discovery_pb2_grpc as dgrpc
from ...proto import gateway_pb2 as gpb

LATENCY_NAMES = [m.name.lower() for m in Latency if m]


def parse_near(text: str) -> tuple[float, float]:
    """``LAT,LON`` -> floats; raises click.BadParameter."""
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"expected LAT,LON, got {text!r}", param_hint="--near") from exc
    if not -90 <= lat <= 90 or not -180 <= lon <= 180:
        raise click.BadParameter(f"{text!r} is not a valid position", param_hint="--near")
    return lat, lon


def read_token_file(path: str | None) -> bytes:
    if not path:
        raise UserError("an application token is required: --token FILE (see `edgistry token app`)")
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise UserError(f"cannot read token: {exc}") from exc


def _rpc_error(exc: grpc.aio.AioRpcError, gateway: str) -> UserError:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return UserError(f"cannot reach the gateway at {gateway}: {exc.details()}")
    return UserError(f"{exc.code().name.lower()}: {exc.details()}")


async def discover(gateway: str, token: bytes, stype: str, lat: float, lon: float, radius_km: float,
                   filters: dpb.Filters | None = None, page_size: int = 0, all_pages: bool = False,
                   timeout: float = 10.0) -> list[dpb.Handle]:
    """Handles from one gateway (every page with ``all_pages``)."""
    req = dpb.DiscoverRequest(token=token, service_type=stype, page_size=page_size,
                              region=dpb.Region(lat=lat, lon=lon, radius_km=radius_km), filters=filters)
    out: list[dpb.Handle] = []
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = dgrpc.DiscoveryStub(channel)
        while True:
            try:
                resp = await stub.Discover(req, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc, gateway) from exc
            out.extend(resp.handles)
            if not all_pages or not resp.next_page_token:
                return out
            req.page_token = resp.next_page_token


async def invoke_any(gateway: str, token: bytes, stype: str, lat: float, lon: float, radius_km: float,
                     method: str, args: bytes = b"{}", timeout_s: float = 30.0, ttl_s: int = 0) -> gpb.Result:
    """Let the Edgistry pick one device of ``stype`` near (lat, lon) and invoke ``method`` on it."""
    req = dpb.InvokeAnyRequest(token=token, service_type=stype, method=method, args=args,
                               region=dpb.Region(lat=lat, lon=lon, radius_km=radius_km),
                               timeout_ms=int(timeout_s * 1000), ttl_s=ttl_s)
    async with grpc.aio.insecure_channel(gateway) as channel:
        try:
            return await dgrpc.DiscoveryStub(channel).InvokeAny(req, timeout=timeout_s + 5)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, gateway) from exc


def run_invoke_any(gateway: str, token_file: str | None, stype: str, near: str, radius_km: float, method: str,
                   args: str = "{}", timeout_s: float = 30.0, as_json: bool = False) -> None:
    """What ``edgistry invoke --any TYPE --near LAT,LON METHOD`` does (called by gateway/cli.py)."""
    lat, lon = parse_near(near)
    if method.startswith(stype + "."):  # "sensor.read" as with a handle, or just "read"
        method = method[len(stype) + 1:]
    res = asyncio.run(invoke_any(gateway, read_token_file(token_file), stype, lat, lon, radius_km, method,
                                 args.encode(), timeout_s))
    state = gpb.RequestState.Name(res.state)
    if as_json:
        payload = json.loads(res.payload) if res.payload else None
        click.echo(json.dumps({"request_id": res.request_id, "state": state, "payload": payload,
                               "error": res.error, "from_cache": res.from_cache}))
    elif res.state == gpb.DONE:
        click.echo(res.payload.decode(errors="replace"))
    else:
        raise UserError(f"{state.lower()}: {res.error or 'no response yet'} (request {res.request_id})")


@click.command("discover")
@click.argument("stype", metavar="TYPE")
@click.option("--near", required=True, metavar="LAT,LON", help="Centre of the region.")
@click.option("--radius-km", type=float, default=1.0, show_default=True, help="Radius of the region.")
@click.option("--gateway", required=True, metavar="HOST:PORT", help="Any gateway's gRPC address.")
@click.option("--token", "token_file", type=click.Path(dir_okay=False), help="Application token file.")
@click.option("--max-latency", type=click.Choice(LATENCY_NAMES), help="Slowest acceptable latency class.")
@click.option("--seen-within", type=int, default=0, help="Last contact within this many seconds.")
@click.option("--page-size", type=int, default=0, help="Handles per page (default 50).")
@click.option("--all", "all_pages", is_flag=True, help="Follow every page.")
@click.option("--json", "as_json", is_flag=True, help="Print the handles as JSON.")
def discover_cmd(stype: str, near: str, radius_km: float, gateway: str, token_file: str | None,
                 max_latency: str | None, seen_within: int, page_size: int, all_pages: bool,
                 as_json: bool) -> None:
    """Find devices offering TYPE near a place: opaque handles, coarse cells, latency classes."""
    lat, lon = parse_near(near)
    filters = dpb.Filters(max_latency=Latency[max_latency.upper()] if max_latency else 0,
                          seen_within_s=seen_within)
    handles = asyncio.run(discover(gateway, read_token_file(token_file), stype, lat, lon, radius_km,
                                   filters, page_size, all_pages))
    rows = [{"handle": h.handle, "cell": f"{h.cell:x}", "latency": Latency(h.latency).name.lower(),
             "gateway": h.gateway, "expires_at_ms": h.expires_at_ms} for h in handles]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['handle']}  cell={r['cell']} latency={r['latency']} gateway={r['gateway']}")
    click.echo(f"{len(rows)} handle(s)", err=True)
