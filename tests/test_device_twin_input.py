"""A desired twin change whose value is not text (only a buggy or compromised gateway sends
one: its twin API takes JSON) is passed over: the wake goes on and the change is counted as
applied, so it does not come back at every wake. Before, the decoding error stopped the
board's loop (it catches only WakeFailed)."""

from __future__ import annotations

import json

from edgistry.firmware.device.dev_core import Wake
from edgistry.firmware.device.dev_services import Services
from edgistry.firmware.device.dev_state import DevState


class Memory:
    """A state backend in memory (the board's is the A/B slot file)."""

    value = None

    def load(self):
        return None if self.value is None else json.loads(self.value)

    def save(self, d):
        self.value = json.dumps(d)


def test_a_twin_value_that_is_not_text_is_passed_over():
    st = DevState(Memory())
    wake = Wake(st, Services(), None, b"k" * 32, lambda: 0, lambda: 0, 60)
    changes = [{"key": "mode", "value": b"\xff", "version": 1}, {"key": "led", "value": b'"on"', "version": 2}]
    wake.absorb([], False, [], changes, 0)
    assert st.twin["desired"] == {"led": '"on"'} and st.twin["applied"] == 2
