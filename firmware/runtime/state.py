"""The device's durable state on CPython: ``<home>/state.json``.

The state itself (ticket, last sequence, revocations, twin, the
request/response store and its life cycle) is the portable core's
(firmware/device/dev_state.py), shared with boards. This module is only its
CPython storage: one JSON file, every save one atomic replace (temp file,
fsync, rename, fsync of the directory), so a kill -9 leaves either the old or
the new state, never a torn one. A board cannot rename over a file (FAT) and
keeps two MAC'd slots instead (firmware/device/dev_store.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..device import dev_state
from ..device.dev_state import ACKED, DONE, NEVER, RUNNING, STATE_VERSION, STORED, DevState, b64, unb64
from .home import write_json

MAX_ENTRIES = dev_state.MAX_ENTRIES
MAX_ACKED = dev_state.MAX_ACKED
MAX_REVOKED = dev_state.MAX_REVOKED

__all__ = ["ACKED", "DONE", "NEVER", "RUNNING", "STATE_VERSION", "STORED", "DeviceState", "JsonFileStore",
           "b64", "unb64"]


class JsonFileStore:
    """``load()`` / ``save()`` of the state dict as one atomically replaced JSON file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a device state")
        return data

    def save(self, value: dict) -> None:
        write_json(self.path, value, 0o600)


class DeviceState(DevState):
    """The core state kept in ``path`` (a JSON file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            super().__init__(JsonFileStore(self.path))
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from exc

    # the bounds are read from this module at use, so tests can lower them
    max_entries = property(lambda self: MAX_ENTRIES)  # type: ignore[assignment]
    max_acked = property(lambda self: MAX_ACKED)  # type: ignore[assignment]
    max_revoked = property(lambda self: MAX_REVOKED)  # type: ignore[assignment]
