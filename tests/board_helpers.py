"""The device package as a board gets it, for tests that run the core on MicroPython."""

from __future__ import annotations

from pathlib import Path

from edgistry.firmware.export import write_package


def board_lib(tmp: Path, udp: bool = True) -> Path:
    """The device package as ``edgistry device export`` ships it to a board, as .py
    sources, under ``tmp/lib``: put ``lib`` on a path, or hand ``lib/edgistry`` to
    MicroPython.run."""
    lib = tmp / "lib"
    write_package(lib, mpy=False, udp=udp)
    return lib
