"""A scripted device that keeps a twin over the real link: one wake takes the desired
changes it has not applied (REQUESTS ``twin``), applies them in version order, keeps
what it applied across wakes as a board would in flash, and reports (RESPONSES
``twin``) until the gateway ACKs. Gateway tests use it as the device side."""

from __future__ import annotations

import json
import os
import socket
import time

from edgistry.firmware.link.link_device import DeviceSession
from edgistry.firmware.link.link_session import CLOSED, NEED_DATA, Ack, Bye, Established, Requests, Responses
from gateway_helpers import ScriptedDevice


class TwinDevice(ScriptedDevice):
    """A device with a twin: ``desired`` (what it applied), ``applied`` (its version),
    ``reported`` (its own state, sent when changed), and what each wake received."""

    def __init__(self, device_home, endpoint: str) -> None:
        super().__init__(device_home, endpoint)
        self.desired: dict[str, object] = {}
        self.applied = 0
        self.reported: dict[str, object] = {}
        self._unsent: set[str] = set()  # reported keys not yet ACKed by the gateway
        self.received: list[list[dict]] = []  # twin changes per wake

    def report(self, **props: object) -> None:
        """Change reported properties (None removes one); sent at the next wake."""
        for key, value in props.items():
            if value is None:
                self.reported.pop(key, None)
            else:
                self.reported[key] = value
            self._unsent.add(key)

    def _report(self) -> dict:
        props = [{"key": k, "value": json.dumps(self.reported[k]).encode() if k in self.reported else b"",
                  "version": 0} for k in sorted(self._unsent)]
        return {"applied": self.applied, "reported": props, "replace": False}

    def _apply(self, changes: list[dict]) -> None:
        for c in changes:  # in version order; a change at or below what was applied is a resend
            if c["version"] <= self.applied:
                continue
            if c["value"]:
                self.desired[c["key"]] = json.loads(c["value"])
            else:
                self.desired.pop(c["key"], None)
            self.applied = c["version"]

    def wake(self, handler=None, answer: bool = True, timeout: float = 10.0, sleep_s: int = 2) -> list[dict]:
        """Connect, run one session; return the twin changes received."""
        self.wakes += 1
        s = DeviceSession(self.secret, self.root, self.link_id, self.identity, os.urandom)
        got: list[dict] = []
        self.received.append(got)
        waiting, sent_keys, more = 0, set(), True  # RESPONSES not ACKed yet
        with socket.create_connection(self.addr, timeout=timeout) as sock:
            sock.sendall(s.initiate())
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                s.receive_data(data)
                while True:
                    ev = s.next_event()
                    out = s.data_to_send()
                    if out:
                        sock.sendall(out)
                    if ev is NEED_DATA:
                        break
                    if ev is CLOSED:
                        return got
                    if isinstance(ev, Established):
                        if self._unsent:  # reported state changed while asleep: first flight
                            sent_keys |= self._unsent
                            sock.sendall(s.send(Responses([], self._report())))
                            waiting += 1
                        continue
                    if isinstance(ev, Requests):
                        more = ev.more
                        if ev.twin:
                            got.extend(ev.twin)
                            self._apply(ev.twin)
                            sent_keys |= self._unsent
                            sock.sendall(s.send(Responses([], self._report())))
                            waiting += 1
                    elif isinstance(ev, Ack):
                        waiting -= 1
                        if not waiting:
                            self._unsent -= sent_keys
                    if not waiting and not more:
                        sock.sendall(s.send(Bye(sleep_s)))
                        return got
        return got
