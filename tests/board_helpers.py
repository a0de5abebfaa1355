"""The device package as a board gets it, for tests that run the core on MicroPython."""

from __future__ import annotations

import contextlib
from pathlib import Path

from edgistry.firmware.export import write_package


def board_lib(tmp: Path, udp: bool = True) -> Path:
    """The device package as ``edgistry device export`` ships it to a board, as .py
    sources, under ``tmp/lib``: put ``lib`` on a path, or hand ``lib/edgistry`` to
    MicroPython.run."""
    lib = tmp / "lib"
    write_package(lib, mpy=False, udp=udp)
    return lib


def board_dir(tmp: Path, home) -> Path:
    """A board's folder as `edgistry device export` fills it for ``home``'s device:
    its secret and device.json (what dev_mp.Board reads)."""
    import json

    from edgistry.firmware import export as ex

    board = tmp / "board"
    board.mkdir()
    (board / "secret").write_bytes(home.secret())
    (board / "device.json").write_text(json.dumps(ex.board_config(home)))
    return board


@contextlib.contextmanager
def board_on_link(tmp: Path):
    """A MemoryBackend, a real link server over it (in a thread), a device paired there
    (encrypted) and its board folder: yields (backend, home, board folder)."""
    from edgistry.gateway.link.backend import MemoryBackend
    from edgistry.gateway.link.server import LinkServer, LinkServerThread
    from runtime_helpers import GATEWAY_SECRET, make_home

    backend = MemoryBackend(GATEWAY_SECRET)
    server = LinkServerThread(LinkServer(backend, port=0))
    srv = server.start()
    try:
        home = make_home(tmp / "d", backend, srv.port, encrypt=True)
        yield backend, home, board_dir(tmp, home)
    finally:
        server.stop()
