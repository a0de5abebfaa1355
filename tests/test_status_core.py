"""The status page's pure parts: the map never shows what discovery withholds (checked
against an independent oracle of the grouping rule over random fleets), and the
operator credential checks (constant-time secret, sessions, lockout, the secret file)."""

from __future__ import annotations

import random

import h3
import pytest
from discovery_helpers import population
from test_discovery_privacy import reference_groups

from edgistry.gateway.discovery.index import RegistryIndex
from edgistry.gateway.status import auth, hexmap
from edgistry.gateway.status.snapshot import RecentErrors


@pytest.mark.parametrize("seed", range(8))
def test_the_map_draws_exactly_discoverys_disclosure_cells_and_counts(seed):
    """Every drawn cell is a disclosure cell with exactly its disclosed devices (each at least
    every member's k); every withheld device is counted as withheld and drawn nowhere."""
    rng = random.Random(seed)
    entries = population(rng, rng.randint(5, 300))
    index = RegistryIndex()
    index.load(entries)
    layer = hexmap.layers(index)["sensor"]
    truth = reference_groups(entries)
    expected: dict[int, int] = {}
    for p, cell in truth.items():
        if cell is not None:
            expected[cell] = expected.get(cell, 0) + 1
    drawn = {int(c["cell"], 16): c["count"] for c in layer["cells"]}
    assert drawn == expected
    k = {e.pseudonym: e.k for e in entries}
    for cell, n in drawn.items():
        assert n >= max(k[p] for p, c in truth.items() if c == cell)
    assert layer["withheld"] == sum(1 for c in truth.values() if c is None)
    assert layer["disclosed"] + layer["withheld"] == len(entries)


def test_a_lone_device_with_k_above_one_is_never_drawn_even_after_others_leave():
    """Two devices with k=2 share a cell and are drawn; one leaves: nothing is drawn any more."""
    from discovery_helpers import entry

    rng = random.Random(1)
    a, b = entry(rng, 48.85, 2.35, k=2), entry(rng, 48.85, 2.35, k=2)
    index = RegistryIndex()
    index.load([a, b])
    assert [c["count"] for c in hexmap.layers(index)["sensor"]["cells"]] == [2]
    index.remove(b.pseudonym)
    assert hexmap.layers(index)["sensor"] == {"cells": [], "withheld": 1, "disclosed": 0}


def test_boundaries_are_the_h3_library_vertices():
    """A drawn cell's outline is h3's boundary of that cell (six vertices for a hexagon)."""
    cell = h3.latlng_to_cell(46.52, 6.57, 7)
    got = hexmap.Cell(h3.str_to_int(cell), 3, hexmap.boundary(h3.str_to_int(cell))).to_dict()
    assert got["cell"] == cell and got["res"] == 7 and len(got["boundary"]) == 6
    assert got["boundary"][0] == [round(x, 6) for x in h3.cell_to_boundary(cell)[0]]


def test_operator_secret_file_is_made_once_private_and_reused(tmp_path):
    """The first start makes a 0600 random secret; later starts read the same one."""
    first = auth.load_or_create_secret(tmp_path)
    assert len(first) == 64 and (tmp_path / auth.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert auth.load_or_create_secret(tmp_path) == first
    (tmp_path / auth.SECRET_FILE).write_text("short\n")
    with pytest.raises(ValueError, match="at least 32"):
        auth.load_or_create_secret(tmp_path)


def test_credentials_bearer_sessions_expiry_and_lockout():
    """Only the exact secret passes (bearer or form); sessions expire and end at logout;
    an address that keeps failing is locked out for a while."""
    now = [1000.0]
    a = auth.OperatorAuth("s" * 64, clock=lambda: now[0])
    assert a.check_bearer("Bearer " + "s" * 64) and a.check_bearer("bearer " + "s" * 64)
    for bad in (None, "", "Basic " + "s" * 64, "Bearer " + "s" * 63, "Bearer " + "s" * 65, "Bearer",
                "Bearer \udcff" + "s" * 63):  # bytes that are not UTF-8, as aiohttp hands them over
        assert not a.check_bearer(bad)
    assert not a.check_session("\udcfe" * 10)
    sid = a.new_session()
    assert a.check_session(sid) and not a.check_session(sid[:-1] + "x") and not a.check_session(None)
    now[0] += auth.SESSION_TTL_S + 1
    assert not a.check_session(sid)
    sid = a.new_session()
    a.end_session(sid)
    assert not a.check_session(sid)
    for _ in range(auth.MAX_FAILURES):
        assert not a.locked_out("10.0.0.1")
        a.failed("10.0.0.1")
    assert a.locked_out("10.0.0.1") and not a.locked_out("10.0.0.2")
    now[0] += auth.FAILURE_WINDOW_S + 1
    assert not a.locked_out("10.0.0.1")


def test_a_rotated_operator_secret_replaces_the_old_one_and_ends_sessions(tmp_path):
    """Writing a new secret to the file is how an operator rotates it: from the next check
    only the new one passes and every session (so every open event stream) has ended; an
    unreadable file lets nobody in. Before, the old secret and its sessions lived until a
    restart."""
    import os

    a = auth.OperatorAuth.from_keys(tmp_path)
    old = (tmp_path / auth.SECRET_FILE).read_text().strip()
    sid = a.new_session()
    assert a.check_bearer("Bearer " + old) and a.check_session(sid)
    new = "n" * 64
    path = tmp_path / auth.SECRET_FILE
    path.write_text(new + "\n")
    os.utime(path, ns=(1, 1))  # a different mtime even within the file system's clock tick
    assert not a.check_bearer("Bearer " + old) and not a.check_session(sid)
    assert a.check_bearer("Bearer " + new)
    path.unlink()
    assert not a.check_bearer("Bearer " + new) and not a.check_bearer("Bearer ")


def test_recent_errors_keep_the_last_warnings_on_one_line():
    """The handler keeps WARNING and above, newest last, bounded, messages flattened."""
    import logging

    h = RecentErrors(size=3)
    log = logging.getLogger("edgistry.test.status")
    h.attach("edgistry.test.status")
    try:
        log.info("not kept")
        for i in range(5):
            log.warning("line %d\nsecond line", i)
    finally:
        h.detach("edgistry.test.status")
    assert [r["message"] for r in h.records] == [f"line {i} second line" for i in (2, 3, 4)]


def test_an_event_stream_whose_reader_stopped_reading_frees_its_slot(monkeypatch):
    """An operator's stream that takes no update for STREAM_WRITE_S is cut, so a reader
    that stalls (or a script that opened streams and never reads them) cannot hold the
    stream slots for ever; before, its write waited with no end."""
    import asyncio
    import os
    import socket

    from aiohttp import web

    from edgistry.gateway.status import routes

    monkeypatch.setattr(routes, "MAX_STREAMS", 1)
    monkeypatch.setattr(routes, "STREAM_WRITE_S", 0.5)

    class Source:  # a snapshot that changes every time and is large: the socket buffers fill fast
        async def snapshot(self):
            return {"blob": os.urandom(256 * 1024).hex()}

    async def main():
        app = web.Application()
        secret = "s" * 64
        routes.install(app, auth.OperatorAuth(secret), Source(), interval_s=0.01)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        ask = f"GET /status/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
        try:
            stalled = socket.socket()
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", port))
            stalled.sendall(ask)  # and never reads
            await asyncio.sleep(0.3)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(ask)
            assert b" 503 " in (await asyncio.wait_for(r.readline(), 5))  # the one slot is taken
            w.close()
            for _ in range(50):  # within a few STREAM_WRITE_S the stalled stream is cut and its slot free
                await asyncio.sleep(0.2)
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(ask)
                line = await asyncio.wait_for(r.readline(), 5)
                w.close()
                if b" 200 " in line:
                    break
            assert b" 200 " in line, line
            stalled.close()
        finally:
            await runner.cleanup()
    asyncio.run(main())
