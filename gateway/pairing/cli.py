"""``edgistry pair``: pair a device home with a gateway (or unpair it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ...clikit import Progress, UserError, echo_json, one_line
from ..client.cliglue import GatewayAddress
from .client import DEFAULT_K, DEFAULT_RESOLUTION, PairError, pair_device
from .visibility import advice

CODE_HINT = ("the gateway's one-time code is in <gateway home>/commission.code (shown at start on a terminal): "
             "give --code @FILE to read it, - for standard input, or EDGISTRY_PAIR_CODE; a code on the command "
             "line is visible to every local user in the process list")


def read_code(value: str) -> str:
    """--code: the code itself, @FILE (the gateway's commission.code) or - (standard input)."""
    try:
        if value == "-":
            return click.get_text_stream("stdin").readline().strip()
        if value.startswith("@"):
            return Path(value[1:]).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the commissioning code from {value[1:] or 'standard input'}: {exc}") from exc
    return value.strip()


@click.command("pair")
@click.option("--device", "device_home", type=click.Path(path_type=Path), required=True,
              help="The device home (made by `edgistry device init`).")
@click.option("--gateway", type=GatewayAddress(), required=True, envvar="EDGISTRY_GATEWAY",
              help="The gateway's gRPC address, HOST[:PORT] (port 26670 if omitted).")
@click.option("--resolution", type=click.IntRange(0, 15), default=DEFAULT_RESOLUTION, show_default=True,
              help="H3 resolution at which the device may be found.")
@click.option("--k", type=click.IntRange(1, 10_000), default=DEFAULT_K, show_default=True,
              help="Minimum anonymity set: devices of its type sharing a cell before any is disclosed.")
@click.option("--code", default=None, metavar="CODE|@FILE|-",
              help=f"The gateway's one-time commissioning code ({CODE_HINT}).")
@click.option("--unpair", is_flag=True, help="Unpair the device from this gateway instead.")
@click.option("--expect-gateway", default=None, help="Refuse unless the gateway has this id.")
@click.option("--rpc", default=None, metavar="URL",
              help="A node RPC URL: check the gateway's key and TLS certificate against the key and certificate the "
                   "registry holds for it.")
@click.option("--pin", default=None, metavar="FILE", envvar="EDGISTRY_PIN",
              help="Trust exactly this gateway certificate (default: the one the gateway presents, kept only if "
                   "its signed offer binds it to the gateway's key).")
@click.option("--insecure", is_flag=True, help="Pair in plaintext with a gateway run with --insecure.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pair_cmd(device_home: Path, gateway: str, resolution: int, k: int, code: str | None, unpair: bool,
             expect_gateway: str | None, rpc: str | None, pin: str | None, insecure: bool, as_json: bool) -> None:
    """Pair a device with a gateway (or unpair it) over the one-time commissioning channel.

    Writes paired.json (link endpoint, identity token, pseudonym, gateway id)
    into the device home, a read-only application token file beside it, and
    gateway.pem, the gateway's TLS certificate, which clients pin (--pin); and says
    whether discovery shows the device yet (the gateway tells: only gateways can read
    service types and cells on chain).
    """
    code = read_code(code) if code else code
    if not unpair and not code:
        raise UserError(f"give --code: {CODE_HINT}")
    pinned = None
    if pin:
        from ..client.errors import ConfigError
        from ..client.pins import pin_from_file

        try:
            pinned = pin_from_file(pin)
        except ConfigError as exc:
            raise UserError(str(exc)) from exc
    what = "unpairing" if unpair else "pairing (the registry commits the device)"
    with Progress(f"{what} at {gateway}"):
        try:
            out = asyncio.run(pair_device(device_home, gateway, code or "", resolution, k, unpair, expect_gateway,
                                          rpc, pin=pinned, insecure=insecure))
        except PairError as exc:
            raise UserError(one_line(_hint(str(exc)))) from exc
    if as_json:
        echo_json(out)
    elif unpair:
        click.echo(f"unpaired {out['pseudonym']} from gateway {out['gateway_id']}")
    else:
        click.echo(f"paired with gateway {out['gateway_id']} (registry height {out['height']})")
        click.echo(f"pseudonym     {out['pseudonym']}")
        click.echo(f"owner handle  {out['owner_handle']}")
        click.echo(f"app token     {out['app_token_file'] or '(none: the device has no read-only method)'}")
        click.echo(f"device link   {out['link_endpoint']}")
        if out["tls_pin_file"]:
            click.echo(f"TLS pin       {out['tls_pin_file']} (SHA-256 {out['tls_pin_sha256']})")
        else:
            click.echo("TLS pin       none: the gateway runs --insecure (plaintext)")
        click.echo(f"next: edgistry device run --home {device_home}", err=True)
    if unpair:
        return
    if "discovery" not in out:
        if k > 1:
            click.echo(f"note: discovery shows a device only where at least k={k} devices of its type share a "
                       "cell; the gateway could not tell yet whether this one is visible (`edgistry discover` "
                       "will)", err=True)
        return
    for v in out["discovery"]:
        click.echo(("" if v["visible"] else "note: ") + advice(v), err=True)


def _hint(message: str) -> str:
    """What to do about a pairing failure, where the failure does not say it already."""
    if message.startswith("cannot reach"):
        return f"{message}; is the gateway running there? (check --gateway)"
    if "wrong commissioning code" in message:
        return f"{message}; give the current --code"
    return message
