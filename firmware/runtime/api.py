"""The device runtime (CPython side of a device): home, state, services, duty cycle.

* ``home``: the device home layout, ``paired.json`` (the pairing tool's contract)
* ``state``: durable runtime state (ticket, last sequence, request/response store, revocations)
* ``services``: ServiceRegistry and the demo ``sensor`` and ``actuator`` services
* ``device``: :class:`Device` (``wake()``, ``run()``), the outbound-only duty-cycle loop

Running a demo device in-process (what ``edgistry up --demo-devices`` needs)::

    home = DeviceHome(path); home.create({"services": [...], "duty_cycle_s": 5})
    ... pair it (gateway side), then home.write_paired("127.0.0.1:26671", identity_token, ...)
    stop = asyncio.Event()
    task = asyncio.create_task(Device(home).run(stop=stop))
"""

from . import device, home, services, state  # submodules as attributes too
from .device import Device, WakeFailed, WakeReport
from .home import DeviceHome, HomeError, Pairing
from .services import ServiceRegistry, build_registry
from .state import DeviceState

__all__ = [
    "device", "home", "services", "state",
    "Device", "DeviceHome", "DeviceState", "HomeError", "Pairing", "ServiceRegistry",
    "WakeFailed", "WakeReport", "build_registry",
]
