"""The demo services on a board (portable): ``sensor`` and ``actuator``.

The same names and marks as the CPython demo (firmware/runtime/services.py),
written for a small heap: no floats kept, no per-request files.

* ``sensor``: ``read [{"settle_s": S}]`` a simulated reading derived from the
  device id and the second (sampled after an optional warm-up), ``info``.
* ``actuator``: ``get``; ``set {"on": bool}`` (mutating, idempotent: setting a
  value twice leaves the same state); ``toggle [{"hold_s": S}]`` (mutating,
  *not* idempotent: a toggle run twice undoes itself, so a crash during one is
  answered INTERRUPTED rather than run again). Its state is ``actuator.json``.
"""

import hashlib
import json
import time

from .dev_services import BadArguments

MAX_WAIT_S = 10


def _wait(args, name):
    s = args.get(name, 0) if isinstance(args, dict) else 0
    if not isinstance(s, int) or not 0 <= s <= MAX_WAIT_S:
        raise BadArguments("%s is whole seconds within 0..%d" % (name, MAX_WAIT_S))
    if s:
        time.sleep(s)
    return s


def add_sensor(svc, device_id, methods=None):
    def read(args, call):
        settle = _wait(args, "settle_s")
        second = int(call.now) + settle
        h = hashlib.sha256(b"edgistry/sensor" + device_id + second.to_bytes(8, "big")).digest()
        return {"temperature_c": 18 + h[0] % 80 / 10, "humidity_pct": 40 + h[1] % 300 / 10,
                "t": second}

    def info(args, call):
        return {"model": "edgistry-board-th1", "units": {"temperature": "C", "humidity": "%RH"}}

    _add(svc, "sensor", {"read": (read, False, 5, True), "info": (info, False, 3600, True)}, methods)


class Actuator:
    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path) as fh:
                return json.loads(fh.read(512))
        except (OSError, ValueError):
            return {"on": False, "changes": 0}

    def save(self, st):
        # one small file rewritten in place: the request store, not this file, is
        # what makes a mutating call run at most once
        with open(self.path, "w") as fh:
            fh.write(json.dumps(st))

    def get(self, args, call):
        return self.load()

    def set(self, args, call):
        if not isinstance(args, dict) or not isinstance(args.get("on"), bool):
            raise BadArguments('expected {"on": true|false}')
        st = self.load()
        if st["on"] != args["on"]:
            st["on"] = args["on"]
            st["changes"] += 1
            self.save(st)
        return st

    def toggle(self, args, call):
        st = self.load()
        st["on"] = not st["on"]
        st["changes"] += 1
        self.save(st)
        _wait(args, "hold_s")  # the relay settles; a crash here leaves the toggle done
        return st


def add_actuator(svc, root, methods=None):
    act = Actuator(root + "/actuator.json")
    _add(svc, "actuator", {"get": (act.get, False, 0, True), "set": (act.set, True, 0, True),
                           "toggle": (act.toggle, True, 0, False)}, methods)


def _add(svc, service, offered, methods):
    for name in methods or list(offered):
        if name not in offered:
            raise ValueError("service %s has no method %s" % (service, name))
        fn, mutating, cache, idempotent = offered[name]
        svc.register(service, name, fn, mutating=mutating, cache_max_age_s=cache,
                     idempotent=idempotent)


def demo_services(svc, root, device_id, spec):
    """Register what ``spec`` (device.json ``services``: [{"type", "methods"}]) names."""
    for s in spec:
        if s["type"] == "sensor":
            add_sensor(svc, device_id, s.get("methods"))
        elif s["type"] == "actuator":
            add_actuator(svc, root, s.get("methods"))
        else:
            raise ValueError("unknown demo service type " + s["type"])
