"""What a board ships holds only what a board runs.

The device package (``edgistry device export``) is the token core, the device
side of the link and the device program; its .mpy code counts against the
board's flash and, loaded, its heap (benchmarks/device_heap.py). Code only the
gateway or the CPython API runs lives in modules a board does not ship
(cap_entries, cap_token, cap_fast, link_gateway, x25519, gateway/link/...).
These tests hold that line: every module-level definition of a shipped module
is used by the shipped code (main.py included), and a shipped module imports
only shipped modules, relatively.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgistry.firmware import export as ex

# Definitions a board ships without calling them, and why.
SHARED = {
    # the one name for "the tag of this chain" the CPython side mints and checks with
    ("cap_verify.py", "compute_tag"),
    # the datagram codec's gateway half, kept beside the device half it must match
    ("link_dgram.py", "open_wake"), ("link_dgram.py", "check_wake_mac"), ("link_dgram.py", "peek_data"),
    ("link_dgram.py", "open_data"), ("link_dgram.py", "seal_reply"), ("link_dgram.py", "seal_resync"),
    ("link_dgram.py", "DgramDevice.expects_reply"),
}


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("board") / "lib"
    ex.write_package(lib, mpy=False, udp=True)
    (lib / "main.py").write_text(ex.MAIN_PY)
    return lib


def _parsed(board: Path) -> dict[Path, ast.Module]:
    return {f: ast.parse(f.read_text()) for f in sorted(board.rglob("*.py"))}


def test_every_shipped_definition_is_used_on_the_board(board: Path) -> None:
    trees = _parsed(board)
    used: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.asname or node.name)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)  # handler names in transition tables
    unused = []
    for path, tree in trees.items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
                if isinstance(node, ast.ClassDef):
                    names += [f"{node.name}.{m.name}" for m in node.body
                              if isinstance(m, ast.FunctionDef) and not m.name.startswith("__")]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in names:
                if name.split(".")[-1] not in used and (path.name, name) not in SHARED:
                    unused.append(f"{path.relative_to(board)}: {name}")
    assert not unused, "shipped to every board but never used there (move it to the CPython side):\n" + \
        "\n".join(unused)


def _guarded(tree: ast.Module) -> set[int]:
    """ids of the import statements inside ``try: ... except ImportError``: optional
    accelerators and loaders a board goes without."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                "ImportError" in ast.dump(h.type) for h in node.handlers if h.type is not None):
            out.update(id(n) for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def test_shipped_modules_import_only_shipped_modules(board: Path) -> None:
    shipped = {f.relative_to(board).with_suffix("").as_posix().replace("/", ".") for f in board.rglob("*.py")}
    # what the board's MicroPython has built in
    builtin = {"binascii", "gc", "hashlib", "hmac", "json", "os", "select", "socket", "sys", "time",
               "machine", "micropython"}
    for path, tree in _parsed(board).items():
        if path.name == "main.py":
            continue
        package = path.relative_to(board).parent.as_posix().replace("/", ".")
        optional = _guarded(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                    assert target in shipped or all(f"{target}.{a.name}" in shipped for a in node.names), \
                        f"{path.name} imports {target}, which a board does not ship"
                else:
                    assert node.module in builtin, f"{path.name}: from {node.module} (absolute: not on a board)"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name in builtin, f"{path.name}: import {alias.name}"
