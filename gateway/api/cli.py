"""``edgistry invoke | result``: call a device through a gateway, fetch a result later.

Built on the SDK (``edgistry.client``); its errors become one-line user errors
in ``client/cliglue.py``, the one place the CLI maps them.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ...clikit import Progress, UserError, echo_json
from ..client.cliglue import Connection, Position, connection_options, mapped, show, timed_out, track
from ..client.errors import DeadlineExceeded
from ..client.models import Result, State

HANDLE_HINT = ("handles from `edgistry discover` expire after 10 minutes and work only at the gateway "
               "that issued them: discover again")


def _args(arg: str | None) -> bytes | None:
    if arg is None:
        return None
    try:
        json.loads(arg)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc}); e.g. --arg '{{\"on\": true}}'", param_hint="--arg") from exc
    return arg.encode()


def _wait_invoke(conn: Connection, client, handle: str, method: str, args: bytes | None, service: str,
                 timeout: float, ttl: int, request_id: str, as_json: bool) -> Result:
    with Progress(f"waiting for the device ({method})") as progress, mapped(conn, HANDLE_HINT):
        try:
            return client.invoke(handle, method, args, service=service, timeout=timeout, ttl_s=ttl,
                                 request_id=request_id or None, on_update=track(progress))
        except DeadlineExceeded as exc:
            raise timed_out(exc, conn, timeout, as_json) from exc


@click.command("invoke")
@click.argument("handle")
@click.argument("method", required=False)
@click.option("--any", "any_type", default=None, metavar="TYPE", help="Let the Edgistry pick a device of TYPE "
              "(then the only argument is METHOD).")
@click.option("--near", type=Position(), default=None, help="With --any: centre of the region.")
@click.option("--radius-km", type=click.FloatRange(0, 20000, min_open=True), default=1.0, show_default=True,
              help="With --any: radius of the region.")
@click.option("--arg", "arg", default=None, help="Arguments as JSON.")
@click.option("--timeout", type=click.FloatRange(0, 600, min_open=True), default=30.0, show_default=True,
              help="Seconds to wait for the answer.")
@click.option("--async", "is_async", is_flag=True, help="Queue and print the request id; fetch with `edgistry result`.")
@connection_options
@click.option("--service", default="", help="Service type (when the method name is ambiguous).")
@click.option("--ttl", type=click.IntRange(0), default=0, help="Seconds the request may wait for the device "
              "(default: the gateway's).")
@click.option("--request-id", default="", help="Client-chosen request id (32 hex) making retries idempotent.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def invoke_cmd(handle: str, method: str | None, any_type: str | None, near: tuple[float, float] | None,
               radius_km: float, arg: str | None, timeout: float, is_async: bool, service: str, ttl: int,
               request_id: str, as_json: bool, **connection: Any) -> None:
    """Invoke METHOD (e.g. sensor.read) of the device HANDLE; waits up to --timeout for a sleeping device."""
    conn = Connection(**connection)
    if any_type or near:
        if not (any_type and near) or method is not None:
            raise click.UsageError("use: edgistry invoke --any TYPE --near LAT,LON METHOD")
        from ..discovery.cli import run_invoke_any

        return run_invoke_any(conn, any_type, near, radius_km, handle, _args(arg), timeout, ttl, as_json)
    if method is None:
        raise click.UsageError("missing METHOD: edgistry invoke HANDLE METHOD (e.g. sensor.read)")
    args = _args(arg)
    with conn.client(timeout=timeout) as client:
        if is_async:
            with mapped(conn, HANDLE_HINT):
                res = client.submit(handle, method, args, service=service, ttl_s=ttl, request_id=request_id or None)
            if as_json:
                echo_json(res.to_dict())
            elif res.state is State.DONE:
                click.echo(res.request_id)
                click.echo("(already answered from the gateway's cache)", err=True)
            else:
                click.echo(res.request_id)
            return
        res = _wait_invoke(conn, client, handle, method, args, service, timeout, ttl, request_id, as_json)
    show(res, as_json)


@click.command("result")
@click.argument("request_id")
@connection_options
@click.option("--wait", type=click.FloatRange(0, 3600), default=0.0,
              help="Wait up to this many seconds for a final state.")
@click.option("--cancel", is_flag=True, help="Cancel the request instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def result_cmd(request_id: str, wait: float, cancel: bool, as_json: bool, **connection: Any) -> None:
    """Fetch (or --wait for, or --cancel) the result of an earlier request.

    Exit status 0 when the request is answered (or still pending, without --wait),
    or cancelled by --cancel; 1 when it failed, expired or was cancelled before."""
    conn = Connection(**connection)
    if cancel and wait:
        raise click.UsageError("--cancel and --wait do not go together")
    not_found = "the id is wrong, or the request was purged, or it was made at another gateway"
    with conn.client() as client:
        if cancel:
            with mapped(conn, not_found):
                res = client.cancel(request_id)
            return _cancelled(res, conn, as_json)
        if not wait:
            with mapped(conn, not_found):
                res = client.result(request_id)
            return show(res, as_json)
        with Progress(f"waiting for request {request_id}") as progress, mapped(conn, not_found):
            res = None
            try:
                on_update = track(progress)
                for res in client.watch_result(request_id, timeout=wait):
                    on_update(res)
            except DeadlineExceeded as exc:
                raise timed_out(exc, conn, wait, as_json) from exc
    show(res, as_json)


def _cancelled(res: Result, conn: Connection, as_json: bool) -> None:
    if as_json:
        echo_json(res.to_dict())
    if res.state is State.CANCELLED:
        if not as_json:
            click.echo(f"cancelled request {res.request_id}")
        return
    raise UserError(f"request {res.request_id} had already finished ({res.state.name}): nothing to cancel; "
                    f"see it with: {conn.again('result', res.request_id)}")

