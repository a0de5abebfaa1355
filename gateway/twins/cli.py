"""``edgistry twin get | set | watch``: a device's twin through its gateway, on the SDK.

Properties on the command line follow httpie's habit: ``KEY=TEXT`` sets a
string, ``KEY:=JSON`` any JSON value (``KEY:=null`` deletes, as ``--delete
KEY`` does). ``--expect KEY=VERSION`` makes the set a compare-and-set of that
key (0: it must not exist yet).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ...clikit import Progress, UserError, echo_json, one_line
from ..client.cliglue import Connection, connection_options, mapped
from ..client.errors import PermissionDenied, VersionConflict
from ..client.twins import Twin

HANDLE_HINT = "a twin is reached by the device's owner handle (dev-<pseudonym>, printed by `edgistry pair`)"
TOKEN_NOTE = ("the owner's token (derived from the device's root), or one the owner derived with "
              "--resource /twin/desired:rw or /twin/reported:r")


def parse_property(text: str) -> tuple[str, object]:
    """``KEY=TEXT`` (a string) or ``KEY:=JSON``; raises BadParameter."""
    eq = text.find("=")
    if eq <= 0:
        raise click.BadParameter(f"expected KEY=TEXT or KEY:=JSON, got {text!r}")
    if text[eq - 1] == ":":
        key, raw = text[:eq - 1], text[eq + 1:]
        try:
            return key, json.loads(raw)
        except ValueError as exc:
            raise click.BadParameter(f"{key}:= takes JSON ({exc}); for a string write {key}=TEXT") from exc
    return text[:eq], text[eq + 1:]


@contextmanager
def twin_errors(conn: Connection) -> Iterator[None]:
    """SDK errors as one-line user errors; a refused token says which tokens reach twins."""
    with mapped(conn, HANDLE_HINT):
        try:
            yield
        except PermissionDenied as exc:
            raise UserError(one_line(f"{exc} (give --token: {TOKEN_NOTE})")) from exc


def _when(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def render(twin: Twin) -> str:
    """A twin for people: desired (applied or pending), then reported."""
    lines = [f"twin {twin.target}: version {twin.version}; the device applied up to {twin.applied} "
             f"(at {_when(twin.applied_ms)})"]
    if twin.has_desired:
        wait = f"; device expected about {_when(twin.expected_at_ms)}" if twin.pending and twin.expected_at_ms else ""
        lines.append(f"desired ({twin.pending} pending{wait}):" if twin.pending else "desired (all applied):")
        for key, p in twin.desired.items():
            lines.append(f"  {key:<20} {p.raw.decode():<30} v{p.version}  {'applied' if p.applied else 'pending'}")
    if twin.has_reported:
        lines.append(f"reported (last at {_when(twin.reported_ms)}):")
        for key, p in twin.reported.items():
            lines.append(f"  {key:<20} {p.raw.decode():<30} at {_when(p.at_ms)}")
        if twin.report_error:
            lines.append(f"  (the device's last report was kept out: {twin.report_error})")
    return "\n".join(lines)


def _show(twin: Twin, as_json: bool) -> None:
    if as_json:
        echo_json(twin.to_dict())
    else:
        click.echo(render(twin))


@click.group("twin")
def twin_group() -> None:
    """Device twins: desired state for the device, reported state from it (docs/TWINS.md)."""


@twin_group.command("get")
@click.argument("handle")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the twin as JSON.")
def get_cmd(handle: str, as_json: bool, **connection) -> None:
    """Show the twin of the device HANDLE (its owner handle) without waking it."""
    conn = Connection(**connection)  # connection_options: --gateway, --token, the pin, TLS
    with conn.client() as client, twin_errors(conn):
        twin = client.get_twin(handle)
    _show(twin, as_json)


@twin_group.command("set")
@click.argument("handle")
@click.argument("properties", nargs=-1)
@click.option("--delete", "deletes", multiple=True, metavar="KEY", help="Delete a desired key (repeatable).")
@click.option("--expect", "expects", multiple=True, metavar="KEY=VERSION",
              help="Compare-and-set: the key's version now (0: absent); refused if it moved on (repeatable).")
@click.option("--wait", type=click.FloatRange(0, 3600), default=0.0,
              help="Wait up to this many seconds for the device to apply the change.")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the twin as JSON.")
def set_cmd(handle: str, properties: tuple[str, ...], deletes: tuple[str, ...], expects: tuple[str, ...],
            wait: float, as_json: bool, **connection) -> None:
    """Set desired properties of HANDLE: KEY=TEXT (a string) or KEY:=JSON; KEY:=null deletes.

    The device receives what it has not applied at its next wake, however long it sleeps."""
    values: dict[str, object] = dict(parse_property(p) for p in properties)
    values.update({key: None for key in deletes})
    if not values:
        raise click.UsageError("give KEY=TEXT, KEY:=JSON or --delete KEY")
    expect = {}
    for text in expects:
        key, sep, version = text.partition("=")
        if not sep or not version.isdigit():
            raise click.BadParameter(f"expected KEY=VERSION, got {text!r}", param_hint="--expect")
        expect[key] = int(version)
    conn = Connection(**connection)  # connection_options: --gateway, --token, the pin, TLS
    with conn.client() as client, twin_errors(conn):
        try:
            twin = client.set_desired(handle, values, expect=expect or None)
        except VersionConflict as exc:
            raise UserError(f"{exc} (see the versions now: {conn.again('twin', 'get', handle)})") from exc
        if wait:
            twin = _wait_applied(client, handle, twin, wait)
    _show(twin, as_json)


def _wait_applied(client, handle: str, twin: Twin, wait: float) -> Twin:
    """Watch until the device applied the twin's latest desired version, or fail after ``wait`` s."""
    goal = max((p.version for p in twin.desired.values()), default=0)
    with Progress("waiting for the device to apply the change") as progress:
        for twin in client.watch_twin(handle, timeout=wait):
            if twin.applied >= goal:
                return twin
            if twin.expected_at_ms:
                progress.update(f"{twin.pending} change(s) pending; device expected about {_when(twin.expected_at_ms)}")
    raise UserError(f"the device has not applied the change within {wait:g} s; it gets it at its next wake "
                    f"(see it then: edgistry twin get {handle})")


@twin_group.command("watch")
@click.argument("handle")
@click.option("--timeout", type=click.FloatRange(0, None, min_open=True), default=None,
              help="Stop after this many seconds (default: until interrupted).")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print each state as one JSON line.")
def watch_cmd(handle: str, timeout: float | None, as_json: bool, **connection) -> None:
    """Print the twin of HANDLE now and after every change (sets, reports, the device applying)."""
    conn = Connection(**connection)  # connection_options: --gateway, --token, the pin, TLS
    with conn.client() as client, twin_errors(conn):
        for twin in client.watch_twin(handle, timeout=timeout):
            if as_json:
                click.echo(json.dumps(twin.to_dict(), separators=(",", ":")))
            else:
                click.echo(render(twin) + "\n")
