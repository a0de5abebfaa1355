"""Demo devices for ``edgistry up --demo-devices N``.

Each demo device is a real device home under ``<node home>/demo/devN`` (secret,
root token, manifest), paired with this node's gateway through the real
commissioning exchange, and run in process by the real device runtime: it
connects out over the device link on its duty cycle like any other device.
Homes persist, so a restart reuses the same devices and pairings.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import write_secret_file
from ..firmware.caplets import api as caplets
from ..firmware.runtime.device import Device
from ..firmware.runtime.home import DeviceHome, HomeError
from ..firmware.runtime.services import demo_manifest
from .pairing.client import PairError, pair_device
from .tls import Pin

BASE_LAT, BASE_LON = 52.5200, 13.4050  # the demo fleet sits around central Berlin
SPREAD_KM = 4.0
DUTY_CYCLE_S = 5
RESOLUTION = 6  # ~36 km^2 cells: the demo fleet shares a few cells
DEMO_K = 2


@dataclass
class DemoDevice:
    path: Path
    owner_handle: str
    app_token_file: str
    services: list[str]


def _location(i: int) -> dict:
    """A deterministic spot on a spiral around the base point."""
    angle = i * 2.39996  # golden angle: even spread
    r_km = SPREAD_KM * math.sqrt((i + 0.5) / 16)
    lat = BASE_LAT + (r_km / 111.0) * math.cos(angle)
    lon = BASE_LON + (r_km / (111.0 * math.cos(math.radians(BASE_LAT)))) * math.sin(angle)
    return {"lat": round(lat, 6), "lon": round(lon, 6)}


def _services(i: int) -> list[tuple[str, list[str] | None]]:
    return [("sensor", None)] if i % 2 == 0 else [("sensor", None), ("actuator", None)]


async def ensure_demo_device(root: Path, i: int, gateway_grpc: str, code: Callable[[], str],
                             pin: Pin | None = None) -> DemoDevice:
    """Create and pair demo device ``i`` unless it already is (``pin``: the gateway's own
    certificate, read from the node home; None: it runs --insecure)."""
    path = root / f"dev{i}"
    home = DeviceHome(path)
    if not home.exists():
        home.create(demo_manifest(path, _services(i), DUTY_CYCLE_S, encrypt=True, location=_location(i)))
    try:
        paired = home.paired() if home.paired_path.exists() else None
    except HomeError:
        paired = None
    if paired is None:
        result = await pair_device(path, gateway_grpc, code=code(), resolution=RESOLUTION, k=DEMO_K, pin=pin,
                                   insecure=pin is None)
        handle, token_file = result["owner_handle"], result["app_token_file"]
    else:
        handle, token_file = f"dev-{paired.pseudonym}", str(path / "app.token")
    kinds = [s["type"] for s in home.manifest()["services"]]
    owner = path / "owner.token"
    if not owner.exists():  # the owner holds the root token and may derive full rights
        token = caplets.derive(caplets.load(home.root_token()), [caplets.Service(k, ["*"]) for k in kinds])
        write_secret_file(owner, (caplets.to_text(token) + "\n").encode())
    return DemoDevice(path, handle, token_file, kinds)


async def start_demo_devices(node_home: Path, n: int, gateway_grpc: str, code: Callable[[], str],
                             stop: asyncio.Event, announce: Callable[[str], None], pin: Pin | None = None,
                             pin_flag: str = "--insecure") -> list[asyncio.Task]:
    """Create, pair and run ``n`` demo devices; returns their runtime tasks. ``pin_flag``:
    how the printed example commands reach the gateway (``--pin FILE``)."""
    root = node_home / "demo"
    devices = []
    for i in range(n):
        try:
            devices.append(await ensure_demo_device(root, i, gateway_grpc, code, pin))
        except (PairError, HomeError, OSError) as exc:
            announce(f"demo device {i} not started: {exc}")
    tasks = [asyncio.create_task(Device(d.path).run(stop=stop), name=f"demo-{d.path.name}") for d in devices]
    if devices:
        announce(f"{len(devices)} demo devices (wake every {DUTY_CYCLE_S} s), for example:")
        for d in devices[:3]:
            method = "actuator.toggle" if "actuator" in d.services else "sensor.read"
            token = d.app_token_file if method == "sensor.read" else f"{d.path}/owner.token"
            announce(f"  edgistry invoke {d.owner_handle} {method} --gateway {gateway_grpc} --token {token} {pin_flag}")
    return tasks
