"""Services a device offers: a registry of Python functions, and two demo services.

A service method is a function ``fn(args, call) -> result``: ``args`` is the
decoded JSON argument (None when empty), ``call`` a :class:`Call` (request
id, clock); the result must be JSON-serialisable. Raise
:class:`BadArguments` for arguments the method cannot use (status 3); any
other exception is a service error (status 4).

Each method is marked read-only or ``mutating``, optionally cacheable for
``cache_max_age_s`` (the gateway may answer from cache without waking the
device), and ``idempotent`` (safe to run again after a crash interrupted it;
read-only methods always are). The registry writes the manifest's
``services`` list from these marks.

Demo services (``DEMO_SERVICES``):

* ``sensor``: ``read [{"settle_s": S}]`` (temperature and humidity, a
  deterministic simulated signal from the time and the device id, sampled
  after an optional warm-up) and ``info``;
* ``actuator``: ``get``, ``set {"on": bool}`` and ``toggle``; its state lives
  in ``<home>/actuator.json`` with the id of the last request that changed
  it, so a re-run after a crash does not toggle twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..device.dev_services import BadArguments, Call, Method, Services

__all__ = ["BadArguments", "Call", "MethodSpec", "ServiceRegistry"]
from .home import write_json


class ServiceRegistry(Services):
    """Service type -> method name -> Method: the portable core's services table
    (firmware/device/dev_services.py), the same one a board declares, plus what
    only the CPython side writes: the manifest's service list."""

    def manifest_services(self) -> list[dict]:
        return [{"type": t, "methods": [{"name": m.name, "mutating": m.mutating,
                                         "cache_max_age_s": m.cache_max_age_s} for m in ms.values()]}
                for t, ms in self.services.items()]


MethodSpec = Method


# ---- demo: sensor ----------------------------------------------------------------

SENSOR_MODEL = "edgistry-sim-th1"


def sensor_reading(device_id: bytes, t: float) -> dict:
    """Temperature (C) and relative humidity (%) at time ``t``: a daily cycle,
    a slower drift and a little per-second jitter, all derived from the device
    id and the time (the same inputs always give the same reading)."""
    seed = hashlib.sha256(b"edgistry/sensor" + device_id).digest()
    phase = int.from_bytes(seed[:4], "big") / 2**32 * 2 * math.pi
    base = 18 + seed[4] / 255 * 6
    second = int(t)
    jitter = hashlib.sha256(seed + second.to_bytes(8, "big")).digest()
    day = math.sin(2 * math.pi * t / 86400 + phase)
    drift = math.sin(2 * math.pi * t / 600 + phase / 2)
    temp = base + 4 * day + 0.8 * drift + (jitter[0] / 255 - 0.5) * 0.2
    hum = 55 - 15 * day + 3 * drift + (jitter[1] / 255 - 0.5)
    return {"temperature_c": round(temp, 2), "humidity_pct": round(min(max(hum, 0), 100), 1),
            "t": second}


MAX_SETTLE_S = 10.0  # a real sensor may need this long to warm up before a sample


def _read(device_id: bytes, args: Any, call: Call) -> dict:
    """``read [{"settle_s": S}]``: sample after letting the sensor settle S seconds."""
    settle = args.get("settle_s", 0) if isinstance(args, dict) else 0
    if not isinstance(settle, (int, float)) or not 0 <= settle <= MAX_SETTLE_S:
        raise BadArguments(f"settle_s is a number of seconds within 0..{MAX_SETTLE_S:g}")
    if settle:
        time.sleep(settle)
    return sensor_reading(device_id, call.now + settle)


def add_sensor(reg: ServiceRegistry, device_id: bytes, methods: list[str] | None = None,
               clock: Callable[[], float] = time.time) -> None:
    offered = {
        "read": (lambda args, call: _read(device_id, args, call), {"cache_max_age_s": 5}),
        "info": (lambda args, call: {"model": SENSOR_MODEL, "device": device_id.hex()[:8],
                                     "units": {"temperature": "C", "humidity": "%RH"}},
                 {"cache_max_age_s": 3600}),
    }
    _add(reg, "sensor", offered, methods)


# ---- demo: actuator --------------------------------------------------------------

class Actuator:
    """A switch whose state survives restarts (``actuator.json``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def state(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"on": False, "changes": 0, "last_request": ""}

    def _apply(self, on: bool, call: Call) -> dict:
        st = self.state()
        if st.get("last_request") == call.request_id.hex():
            return self._public(st)  # this request already ran (re-run after a crash)
        st = {"on": on, "changes": st["changes"] + (st["on"] != on),
              "last_request": call.request_id.hex(), "updated": int(call.now)}
        write_json(self.path, st)
        return self._public(st)

    @staticmethod
    def _public(st: dict) -> dict:
        return {"on": st["on"], "changes": st["changes"]}

    def get(self, args: Any, call: Call) -> dict:
        return self._public(self.state())

    def set(self, args: Any, call: Call) -> dict:
        if not isinstance(args, dict) or not isinstance(args.get("on"), bool):
            raise BadArguments('set takes {"on": true|false}')
        return self._apply(args["on"], call)

    def toggle(self, args: Any, call: Call) -> dict:
        st = self.state()
        if st.get("last_request") == call.request_id.hex():
            return self._public(st)
        return self._apply(not st["on"], call)


def add_actuator(reg: ServiceRegistry, home: Path, methods: list[str] | None = None) -> None:
    act = Actuator(Path(home) / "actuator.json")
    offered = {
        "get": (act.get, {}),
        "set": (act.set, {"mutating": True, "idempotent": True}),
        "toggle": (act.toggle, {"mutating": True, "idempotent": True}),  # deduped by request id
    }
    _add(reg, "actuator", offered, methods)


def _add(reg: ServiceRegistry, service: str, offered: dict, methods: list[str] | None) -> None:
    names = list(offered) if not methods else methods
    for name in names:
        if name not in offered:
            raise ValueError(f"service {service} has no method {name!r} "
                             f"(it has {', '.join(offered)})")
        fn, marks = offered[name]
        reg.register(service, name, fn, **marks)


DEMO_SERVICES = ("sensor", "actuator")


def demo_manifest(home: Path, specs: list[tuple[str, list[str] | None]], duty_cycle_s: int,
                  encrypt: bool = False, location: dict | None = None) -> dict:
    """A device manifest offering demo services: ``specs`` is [(type, methods or None)].

    Raises ValueError for an unknown type or method.
    """
    reg = ServiceRegistry()
    for kind, methods in specs:
        if kind == "sensor":
            add_sensor(reg, b"", methods)
        elif kind == "actuator":
            add_actuator(reg, home, methods)
        else:
            raise ValueError(f"unknown service type {kind!r} (demo types: {', '.join(DEMO_SERVICES)})")
    return {"services": reg.manifest_services(), "duty_cycle_s": duty_cycle_s, "encrypt": encrypt,
            "location": location}


def build_registry(home: Path, device_id: bytes, manifest: dict,
                   clock: Callable[[], float] = time.time) -> ServiceRegistry:
    """The registry a manifest describes (demo service types only)."""
    reg = ServiceRegistry()
    for svc in manifest.get("services", []):
        names = [m["name"] if isinstance(m, dict) else m for m in svc.get("methods", [])]
        if svc["type"] == "sensor":
            add_sensor(reg, device_id, names, clock)
        elif svc["type"] == "actuator":
            add_actuator(reg, home, names)
        else:
            raise ValueError(f"unknown service type {svc['type']!r} (demo types: "
                             f"{', '.join(DEMO_SERVICES)})")
    return reg
