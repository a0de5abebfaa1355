"""``edgistry device init|run``: make a device home, and run the device.

The device only ever connects out (to the gateway named in ``paired.json``,
written by ``edgistry pair``); it never listens on a port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from ..clikit import UserError

from .runtime.device import Device, WakeFailed
from .runtime.home import DeviceHome, HomeError
from .runtime.services import DEMO_SERVICES, demo_manifest

home_option = click.option("--home", type=click.Path(path_type=Path), required=True,
                           help="Device home directory.")


@click.group("device")
def device_group() -> None:
    """Device runtime: create a device home, run it (outbound link only)."""


def _parse_service(spec: str) -> tuple[str, list[str] | None]:
    kind, _, methods = spec.partition(":")
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    return kind.strip(), names


def _parse_location(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise click.BadParameter("expected LAT,LON, e.g. 34.41,-119.85") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise click.BadParameter("latitude within -90..90, longitude within -180..180")
    return {"lat": lat, "lon": lon}


@device_group.command("init")
@home_option
@click.option("--service", "services", multiple=True, required=True, metavar="TYPE[:m1,m2]",
              help=f"A service to offer (demo types: {', '.join(DEMO_SERVICES)}), optionally "
                   "only some methods. Repeatable.")
@click.option("--location", default=None, metavar="LAT,LON",
              help="Where the device is (stays on the device; pairing discloses a coarse cell).")
@click.option("--duty-cycle", type=click.IntRange(0, 86400), default=10, show_default=True,
              help="Seconds asleep between wakes.")
@click.option("--encrypt/--no-encrypt", default=True, show_default=True,
              help="Encrypt link payloads (also lets a full handshake carry the first requests: 2 round trips).")
@click.option("--link", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True,
              help="How the device wakes: the TCP link, or the datagram link (UDP, same port number; "
                   "fewer bytes and round trips, answers up to one datagram; docs/DEVICE.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def init_cmd(home: Path, services: tuple[str, ...], location: str | None, duty_cycle: int,
             encrypt: bool, link: str, as_json: bool) -> None:
    """Create a device home: secret (0600), root token, link id, manifest."""
    loc = _parse_location(location)
    dev_home = DeviceHome(home)
    try:
        manifest = demo_manifest(home, [_parse_service(spec) for spec in services], duty_cycle, encrypt, loc)
        manifest["link"] = link
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    try:
        dev_home.create(manifest)
    except HomeError as exc:
        raise UserError(str(exc)) from exc
    summary = {"home": str(home), "link_id": dev_home.link_id().hex(),
               "services": {s["type"]: [m["name"] for m in s["methods"]]
                            for s in manifest["services"]},
               "duty_cycle_s": duty_cycle, "encrypt": encrypt, "link": link, "location": loc,
               "root_token": str(dev_home.root_path), "paired": False}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"device home {home}")
    click.echo(f"  link id     {summary['link_id']}")
    for kind, names in summary["services"].items():
        click.echo(f"  service     {kind}: {', '.join(names)}")
    click.echo(f"  duty cycle  {duty_cycle} s{', encrypted link' if encrypt else ''}")
    click.echo(f"  link        {link}")
    click.echo(f"next: edgistry pair --device {home} --gateway HOST:PORT --code @GATEWAY_HOME/commission.code")
    click.echo("      (CODE: the gateway's one-time commissioning code, printed when it starts and kept in "
               "<gateway home>/commission.code)")


@device_group.command("run")
@home_option
@click.option("--once", is_flag=True, help="One wake, then exit (status 1 if it failed).")
@click.option("--linger", type=float, default=0.0, show_default=True,
              help="Seconds to stay connected for pushed work before saying BYE.")
def run_cmd(home: Path, once: bool, linger: float) -> None:
    """Run the device: wake on its duty cycle, connect out, serve requests."""
    try:
        device = Device(home, linger_s=linger)
        device.home.paired()
    except HomeError as exc:
        raise UserError(str(exc)) from exc
    except ValueError as exc:
        raise UserError(f"{home}: {exc}") from exc
    logging.getLogger("edgistry").setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        asyncio.run(_run(device, once))
    except WakeFailed as exc:
        raise UserError(f"wake failed: {exc}") from exc


async def _run(device: Device, once: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await device.run(once=once, stop=stop)


@device_group.command("export")
@home_option
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write (copy its contents to the board's flash).")
@click.option("--source", is_flag=True, help="Ship .py sources instead of .mpy (no mpy-cross needed; "
              "a board then compiles them at import, which costs heap).")
@click.option("--freeze", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write the package to DIR as sources with a manifest.py for a frozen firmware "
                   "build (bytecode in flash, not in the heap) instead of OUT/lib.")
@click.option("--romfs", is_flag=True,
              help="Write the package as a ROMFS image (OUT/edgistry.romfs) instead of OUT/lib, for a "
                   "board whose firmware has a ROMFS partition: `mpremote romfs deploy "
                   "edgistry.romfs`; its bytecode then runs in place from flash (needs mpremote).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export_cmd(home: Path, out: Path, source: bool, freeze: Path | None, romfs: bool, as_json: bool) -> None:
    """Write what to copy to a board: main.py, the device package as .mpy, secret, config."""
    from .export import ExportError, export

    try:
        summary = export(DeviceHome(home), out, mpy=not source, freeze=freeze, romfs=romfs)
    except (HomeError, ExportError) as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if freeze is not None:
        click.echo(f"board directory {out}: main.py, device.json, secret; the package for a frozen "
                   f"firmware build: {summary['freeze_manifest']}")
    elif romfs:
        click.echo(f"board directory {out}: main.py, device.json, secret, edgistry.romfs "
                   f"({summary['package_bytes']} bytes): `mpremote romfs deploy {out}/edgistry.romfs`, "
                   "then copy the rest (without edgistry.romfs)")
    else:
        click.echo(f"board directory {out}: main.py, device.json, secret, lib/ "
                   f"({summary['modules']} {summary['format']} modules, {summary['package_bytes']} bytes)")
    click.echo(f"  gateway link {summary['gateway']}")
    click.echo("next: copy it to the board (e.g. `mpremote cp -r . :`), or try it here: "
               f"cd {out} && micropython main.py")
