"""``edgistry discover`` and the ``--any`` path of ``edgistry invoke``, on the SDK."""

from __future__ import annotations

from typing import Any

import click

from ...clikit import Progress, UserError, echo_json
from ..client.cliglue import Connection, Position, connection_options, mapped, show, timed_out
from ..client.errors import DeadlineExceeded
from ..client.models import Latency

LATENCY_NAMES = [m.name.lower() for m in Latency if m]
NOTHING_HINT = ("no handles: no device of that type there, or fewer than its k devices share a cell "
                "(discovery hides a device until then); widen --radius-km or check the type")


def run_invoke_any(conn: Connection, stype: str, near: tuple[float, float], radius_km: float, method: str,
                   args: bytes | None, timeout: float, ttl: int, as_json: bool) -> None:
    """What ``edgistry invoke --any TYPE --near LAT,LON METHOD`` does."""
    with conn.client(timeout=timeout) as client:
        with Progress(f"waiting for a {stype} device ({method})") as progress, mapped(conn, NOTHING_HINT):
            progress.update("the gateway picks a device and waits for its answer")
            try:
                res = client.invoke_any(stype, method, args, near=near, radius_km=radius_km, timeout=timeout,
                                        ttl_s=ttl)
            except DeadlineExceeded as exc:
                raise timed_out(exc, conn, timeout, as_json) from exc
    show(res, as_json)


MAX_ALL_HANDLES = 100_000  # what --all collects at most


@click.command("discover")
@click.argument("stype", metavar="TYPE")
@click.option("--near", type=Position(), required=True, help="Centre of the region.")
@click.option("--radius-km", type=click.FloatRange(0, 20000, min_open=True), default=1.0, show_default=True,
              help="Radius of the region.")
@connection_options
@click.option("--max-latency", type=click.Choice(LATENCY_NAMES), help="Slowest acceptable latency class.")
@click.option("--seen-within", type=click.IntRange(0), default=0, help="Last contact within this many seconds.")
@click.option("--page-size", type=click.IntRange(0, 500), default=0, help="Handles per page (default 50).")
@click.option("--all", "all_pages", is_flag=True, help="Follow every page.")
@click.option("--json", "as_json", is_flag=True, help="Print the handles as JSON.")
def discover_cmd(stype: str, near: tuple[float, float], radius_km: float, max_latency: str | None,
                 seen_within: int, page_size: int, all_pages: bool, as_json: bool, **connection: Any) -> None:
    """Find devices offering TYPE near a place: opaque handles, coarse cells, latency classes."""
    conn = Connection(**connection)
    handles = []
    with conn.client() as client, mapped(conn):
        for page in client.discover(stype, near, radius_km, max_latency=max_latency, seen_within_s=seen_within,
                                    page_size=page_size, max_pages=None if all_pages else 1):
            handles.extend(page)
            if len(handles) > MAX_ALL_HANDLES:  # a gateway that pages for ever: the region is never this full
                raise UserError(f"more than {MAX_ALL_HANDLES} handles: narrow the region, or page without --all")
    if as_json:
        echo_json([h.to_dict() for h in handles])
        return
    for h in handles:
        click.echo(f"{h.handle}  cell={h.cell_hex} latency={h.latency.name.lower()} gateway={h.gateway}")
    click.echo(f"{len(handles)} handle(s)" if handles else NOTHING_HINT, err=True)
    if handles:
        click.echo(f"invoke one: {conn.again('invoke', 'HANDLE', stype + '.METHOD')}", err=True)
