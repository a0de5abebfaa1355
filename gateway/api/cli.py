"""``edgistry invoke | result``: call a device through a gateway, fetch a result later.

gRPC statuses from the gateway become one-line user errors (exit 1) here,
the only place the CLI maps them.
"""

from __future__ import annotations

import asyncio
import json
import time

import click

from ...clikit import UserError


STATE_NAMES = {0: "UNKNOWN", 1: "QUEUED", 2: "DELIVERED", 3: "DONE", 4: "EXPIRED", 5: "CANCELLED", 6: "FAILED"}


def _rpc_error(exc) -> UserError:
    return UserError(f"{exc.code().name}: {exc.details()}")


def _channel(gateway: str):
    import grpc

    return grpc.aio.insecure_channel(gateway)


def _read_token(path: str | None) -> bytes:
    if not path:
        raise UserError("give --token FILE (the application token file printed by `edgistry pair`)")
    from ..tokens.cli import read_token

    return read_token("@" + path).to_bytes()


def _result_dict(res) -> dict:
    payload = None
    if res.payload:
        try:
            payload = json.loads(res.payload)
        except ValueError:
            payload = res.payload.decode(errors="replace")
    out = {"request_id": res.request_id, "state": STATE_NAMES.get(res.state, str(res.state)), "payload": payload}
    for key in ("error", "expected_at_ms", "expires_at_ms", "from_cache", "device_status"):
        value = getattr(res, key)
        if value:
            out[key] = value
    return out


def _show(res, as_json: bool) -> None:
    d = _result_dict(res)
    if as_json:
        click.echo(json.dumps(d))
        return
    if d["state"] == "DONE":
        click.echo(json.dumps(d["payload"], indent=2) if not isinstance(d["payload"], str) else d["payload"])
        if d.get("from_cache"):
            click.echo("(from the gateway's cache)", err=True)
        return
    if d["state"] in ("QUEUED", "DELIVERED"):
        when = d.get("expected_at_ms")
        hint = f"; device expected in about {max(0, when / 1000 - time.time()):.0f} s" if when else ""
        click.echo(f"{d['request_id']} {d['state']}{hint}")
        return
    raise UserError(f"request {d['request_id']} {d['state']}: {d.get('error') or 'no detail'}")


@click.command("invoke")
@click.argument("handle")
@click.argument("method", required=False)
@click.option("--any", "any_type", default=None, metavar="TYPE", help="Let the Edgistry pick a device of TYPE "
              "(then the only argument is METHOD).")
@click.option("--near", default=None, metavar="LAT,LON", help="With --any: centre of the region.")
@click.option("--radius-km", type=float, default=1.0, show_default=True, help="With --any: radius of the region.")
@click.option("--arg", "arg", default=None, help="Arguments as JSON.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--async", "is_async", is_flag=True, help="Queue and print the request id; fetch with `edgistry result`.")
@click.option("--gateway", required=True, help="HOST:PORT of a gateway's gRPC front end.")
@click.option("--token", "token_file", default=None, help="Token file (the application token from `edgistry pair`).")
@click.option("--service", default="", help="Service type (when the method name is ambiguous).")
@click.option("--ttl", type=int, default=0, help="Seconds the request may wait for the device (default: gateway's).")
@click.option("--request-id", default="", help="Client-chosen request id (32 hex) making retries idempotent.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def invoke_cmd(handle: str, method: str | None, any_type: str | None, near: str | None, radius_km: float,
               arg: str | None, timeout: float, is_async: bool, gateway: str, token_file: str | None, service: str,
               ttl: int, request_id: str, as_json: bool) -> None:
    """Invoke METHOD of the device HANDLE (waits up to --timeout for a sleeping device)."""
    from ...proto import gateway_pb2 as gw

    if any_type or near:  # issue 5: `invoke --any TYPE --near LAT,LON METHOD`
        if not (any_type and near) or method is not None:
            raise click.UsageError("use: invoke --any TYPE --near LAT,LON METHOD")
        from ..discovery.cli import run_invoke_any

        return run_invoke_any(gateway, token_file, any_type, near, radius_km, handle, arg or "{}", timeout, as_json)
    if method is None:
        raise click.UsageError("missing METHOD (invoke HANDLE METHOD)")
    if arg is not None:
        try:
            json.loads(arg)
        except ValueError as exc:
            raise UserError(f"--arg is not JSON: {exc}") from exc
    if "." in method and not service:
        service, _, method = method.rpartition(".")
    req = gw.InvokeRequest(target=handle, method=method, args=(arg or "").encode(), token=_read_token(token_file),
                           timeout_ms=int(timeout * 1000), ttl_s=ttl, service=service, request_id=request_id)

    async def go():
        from ...proto import gateway_pb2_grpc as gw_grpc

        async with _channel(gateway) as chan:
            stub = gw_grpc.GatewayStub(chan)
            if is_async:
                return await stub.Submit(req, timeout=30)
            return await stub.Invoke(req, timeout=timeout + 15)

    res = _call(go())
    if is_async and not as_json:
        click.echo(res.request_id)
        return
    _show(res, as_json)


@click.command("result")
@click.argument("request_id")
@click.option("--gateway", required=True, help="HOST:PORT of the gateway the request was made at.")
@click.option("--token", "token_file", default=None, help="The token file the request was made with.")
@click.option("--wait", type=float, default=0.0, help="Wait up to this many seconds for a final state.")
@click.option("--cancel", is_flag=True, help="Cancel the request instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def result_cmd(request_id: str, gateway: str, token_file: str | None, wait: float, cancel: bool,
               as_json: bool) -> None:
    """Fetch (or --wait for, or --cancel) the result of an earlier request."""
    from ...proto import gateway_pb2 as gw

    req = gw.ResultRequest(request_id=request_id, token=_read_token(token_file))

    async def go():
        from ...proto import gateway_pb2_grpc as gw_grpc

        async with _channel(gateway) as chan:
            stub = gw_grpc.GatewayStub(chan)
            if cancel:
                return await stub.Cancel(req, timeout=30)
            if wait <= 0:
                return await stub.GetResult(req, timeout=30)
            last = None
            try:
                async for res in stub.WatchResult(req, timeout=wait):
                    last = res
                    if res.state not in (1, 2):
                        break
            except Exception as exc:  # the watch deadline: report the last state seen
                import grpc

                if not (isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                        and last is not None):
                    raise
            return last

    _show(_call(go()), as_json)


def _call(coro):
    import grpc

    try:
        return asyncio.run(coro)
    except grpc.aio.AioRpcError as exc:
        raise _rpc_error(exc) from exc
