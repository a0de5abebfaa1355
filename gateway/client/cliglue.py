"""What every command that talks to a gateway shares, on top of the SDK: the connection
options, a :class:`~.sync.Client` made from them, SDK errors as one-line user errors
naming what to fix, and how a request's result is shown (and exits).

Exit status: 0 success; 1 a failure the user can fix (unreachable gateway, bad
token file, a request that failed or expired); 2 usage (a malformed option).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from ...clikit import UserError, echo_json, one_line
from .base import DEFAULT_TARGET
from .errors import (
    ConfigError, DeadlineExceeded, EdgistryError, InsecureTransport, NotFound, PermissionDenied,
    RequestFailed, ResourceExhausted, TokenFileError, Unavailable,
)
from .models import Result, State
from .retry import RetryPolicy
from .sync import Client
from .pins import NO_TLS, choose_tls
from .transport import TLS, parse_target

CLI_RETRY = RetryPolicy(attempts=3, initial_s=0.3, max_s=2.0)  # a person is waiting: give up within seconds


class GatewayAddress(click.ParamType):
    """``HOST[:PORT]``, checked at once (a malformed address is a usage error, exit 2)."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(parse_target(str(value)))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class Position(click.ParamType):
    """``LAT,LON`` in degrees (latitude -90..90, longitude -180..180)."""

    name = "LAT,LON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            lat, lon = (float(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"expected LAT,LON in degrees (e.g. 52.52,13.40), got {value!r}", param, ctx)
        if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
            self.fail(f"latitude must be within -90..90 and longitude within -180..180, got {value!r}", param, ctx)
        return lat, lon


TOKEN_HINT = ("an application token: `edgistry token app --home NODE_HOME --name APP > app.token`, "
              "or the app.token `edgistry pair` writes into the device home")


PIN_HINT = ("--pin FILE (the gateway's <home>/keys/tls.crt, or the gateway.pem `edgistry pair` wrote into the "
            "device home) or --tls-from-registry RPC_URL")


def pin_options(func: Callable) -> Callable:
    """--pin, --tls-from-registry, --gateway-id: where the gateway's certificate comes from."""
    for option in reversed([
        click.option("--pin", default=None, envvar="EDGISTRY_PIN", metavar="FILE",
                     help="Trust exactly this gateway certificate (its keys/tls.crt, or gateway.pem from "
                          "`edgistry pair`)."),
        click.option("--tls-from-registry", "registry_rpcs", multiple=True, envvar="EDGISTRY_TLS_FROM_REGISTRY",
                     metavar="RPC_URL",
                     help="Pin the certificate the registry holds for the gateway; repeat for several nodes, "
                          "which must all agree."),
        click.option("--gateway-id", default=None, metavar="ID",
                     envvar="EDGISTRY_GATEWAY_ID",
                     help="With --tls-from-registry (and needed by it): the gateway's id, as `edgistry gateway "
                          "info` or `edgistry pair` prints it."),
    ]):
        func = option(func)
    return func


def connection_options(func: Callable) -> Callable:
    """--gateway, --token, the pin options, --tls-root, --tls-server-name, --insecure."""
    for option in reversed([
        click.option("--gateway", type=GatewayAddress(), default=DEFAULT_TARGET, show_default=True,
                     envvar="EDGISTRY_GATEWAY", help="A gateway's gRPC address, HOST[:PORT] (port 26670 if omitted)."),
        click.option("--token", "token_file", default=None, envvar="EDGISTRY_TOKEN", metavar="FILE",
                     help=f"Token file: {TOKEN_HINT}."),
        pin_options,
        click.option("--tls-root", default=None, metavar="PEM",
                     help="Trust this CA instead of a pin (a gateway behind a TLS proxy with its own CA)."),
        click.option("--tls-server-name", default=None, metavar="NAME",
                     help="With --tls-root: the name the gateway's certificate carries, if not the host dialled."),
        click.option("--insecure", is_flag=True,
                     help="Plaintext, for a gateway run with --insecure; a token then goes to loopback only."),
    ]):
        func = option(func)
    return func


def tls_settings(target: str, pin: str | None, registry_rpcs: tuple[str, ...] = (), gateway_id: str | None = None,
                 tls_root: str | None = None, tls_server_name: str | None = None,
                 insecure: bool = False) -> TLS | None:
    """The TLS of a command from its options (None: plaintext, with --insecure only); user errors say why not."""
    if tls_server_name and not tls_root:
        raise click.UsageError("--tls-server-name goes with --tls-root")
    if gateway_id and not registry_rpcs:
        raise click.UsageError("--gateway-id goes with --tls-from-registry")
    if registry_rpcs and not gateway_id:
        raise click.UsageError("--tls-from-registry needs --gateway-id ID (`edgistry gateway info` and `edgistry "
                               "pair` print it): a record found by address could be made up on the way")
    try:
        tls = TLS.from_file(tls_root, tls_server_name) if tls_root else None
        return choose_tls(tls=tls, pin=pin, tls_from_registry=registry_rpcs or None,
                          gateway_id=gateway_id, insecure=insecure)
    except ConfigError as exc:
        if str(exc) == NO_TLS:
            raise UserError(f"the gateway at {target} speaks TLS: give {PIN_HINT} (or --insecure for a gateway run "
                            "with --insecure, on loopback)") from exc
        raise UserError(one_line(str(exc))) from exc


@dataclass
class Connection:
    """The connection options of one command."""

    gateway: str
    token_file: str | None = None
    pin: str | None = None
    registry_rpcs: tuple[str, ...] = ()
    gateway_id: str | None = None
    tls_root: str | None = None
    tls_server_name: str | None = None
    insecure: bool = False

    def client(self, need_token: bool = True, timeout: float = 30.0) -> Client:
        if need_token and not self.token_file:
            raise UserError(f"give --token FILE ({TOKEN_HINT})")
        tls = tls_settings(self.gateway, self.pin, self.registry_rpcs, self.gateway_id, self.tls_root,
                           self.tls_server_name, self.insecure)
        try:
            return Client(self.gateway, token=self.token_file, tls=tls, insecure=self.insecure, timeout=timeout,
                          retry=CLI_RETRY)
        except TokenFileError as exc:
            raise UserError(f"--token: {exc}") from exc

    def again(self, *args: str) -> str:
        """An edgistry command line with this connection's options (for "run this next" hints)."""
        opts = [f"--gateway {self.gateway}"] + ([f"--token {self.token_file}"] if self.token_file else [])
        if self.pin:
            opts.append(f"--pin {self.pin}")
        opts += [f"--tls-from-registry {rpc}" for rpc in self.registry_rpcs]
        if self.gateway_id:
            opts.append(f"--gateway-id {self.gateway_id}")
        if self.tls_root:
            opts.append(f"--tls-root {self.tls_root}")
        if self.insecure:
            opts.append("--insecure")
        return " ".join(["edgistry", *args, *opts])


def user_error(exc: EdgistryError, conn: Connection, not_found: str = "") -> UserError:
    """One line saying what went wrong and what to change."""
    err = _user_error(exc, conn, not_found)
    err.message = one_line(err.message)
    return err


def _user_error(exc: EdgistryError, conn: Connection, not_found: str) -> UserError:
    if isinstance(exc, InsecureTransport):
        return UserError(f"refusing to send the token in clear to {conn.gateway}: give {PIN_HINT}; "
                         "a gateway run with --insecure is for loopback only")
    if isinstance(exc, TokenFileError):
        return UserError(f"--token: {exc}")
    if isinstance(exc, Unavailable) and str(exc).startswith("cannot reach"):
        return UserError(f"{exc}; is the gateway running there? (check --gateway)")
    if isinstance(exc, Unavailable):
        return UserError(f"{exc}; try again shortly")
    if isinstance(exc, PermissionDenied):
        return UserError(f"{exc} (check --token: {TOKEN_HINT})")
    if isinstance(exc, NotFound) and not_found:
        return UserError(f"{exc} ({not_found})")
    if isinstance(exc, ResourceExhausted):
        return UserError(f"{exc} (try again in {exc.retry_after:.0f} s)" if exc.retry_after else str(exc))
    return UserError(str(exc))


@contextmanager
def mapped(conn: Connection, not_found: str = "") -> Iterator[None]:
    """SDK errors inside the block become one-line user errors (exit 1)."""
    try:
        yield
    except EdgistryError as exc:
        raise user_error(exc, conn, not_found) from exc


def describe(res: Result) -> str:
    """A request's state in a few words, for progress lines."""
    if res.state is State.QUEUED:
        if res.expected_at_ms:
            left = res.expected_at_ms / 1000 - time.time()
            if left > 1:
                return f"queued; the device is expected to wake in about {left:.0f} s"
            return "queued; the device should wake any moment"
        return "queued for the device"
    if res.state is State.DELIVERED:
        return "delivered to the device; waiting for its answer"
    return res.state.name.lower()


def track(progress: Any) -> Callable[[Result], None]:
    """An ``on_update`` callback telling a :class:`~edgistry.clikit.Progress` where a request is
    (the final state is the command's own output, not a progress line)."""

    def update(res: Result) -> None:
        if not res.final:
            progress.update(describe(res))

    return update


def show(res: Result, as_json: bool, pending_ok: bool = True) -> None:
    """Print a result; a request that failed, expired or was cancelled is a user error (exit 1)
    with or without ``--json`` (JSON on stdout first); one still pending is fine when ``pending_ok``."""
    if as_json:
        echo_json(res.to_dict())
    elif res.state is State.DONE:
        value = res.json()
        if isinstance(value, str):
            click.echo(value)
        else:
            echo_json(value)
        if res.from_cache:
            click.echo("(answered from the gateway's cache)", err=True)
    elif not res.final:
        click.echo(f"{res.request_id} {res.state.name}; {describe(res)}")
    if res.final and res.state is not State.DONE:
        raise UserError(str(RequestFailed(res)))
    if not res.final and not pending_ok:
        raise UserError(f"request {res.request_id} is still {res.state.name}")


def timed_out(exc: DeadlineExceeded, conn: Connection, timeout: float, as_json: bool) -> UserError:
    """The error of a wait that ran out (``--timeout`` / ``--wait``); prints the last state with --json."""
    if as_json and exc.last is not None:
        echo_json(exc.last.to_dict())
    rid = exc.request_id
    if not rid:
        return UserError(f"{exc} (a longer --timeout may help)")
    state = exc.last.state.name if exc.last is not None else "QUEUED"
    return UserError(f"no answer within {timeout:g} s; request {rid} stays {state}. Fetch it later: "
                     f"{conn.again('result', rid, '--wait', '60')}")
