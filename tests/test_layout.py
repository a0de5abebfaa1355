"""The package's structure, read from the tree as it is: one direction of dependencies,
no import cycles, relative imports inside the package, light ``__init__`` files on the
device side, and a wheel that holds exactly the package."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_PACKAGE = {"tests", "benchmarks", "docs", "build", "dist", "node_modules", "__pycache__"}

# Which part may import which. A part is a top-level folder or a root module; the
# shared root modules sit at the bottom, the entry point (cli) at the top.
#   firmware (device core)  <-  gateway  <-  cluster
#   abci_app (the state machine) depends on neither gateway nor cluster
ALLOWED: dict[str, set[str]] = {
    "proto": set(),
    "config": set(),
    "gc_policy": set(),
    "aiotasks": set(),
    "http_guard": set(),
    "textsafe": set(),
    "clikit": {"config"},
    "__init__": set(),
    "firmware": {"clikit", "config"},
    "abci_app": {"proto", "config", "clikit", "gc_policy", "aiotasks", "http_guard", "__init__"},
    "chain": {"abci_app", "proto"},
    "gateway": {"firmware", "abci_app", "chain", "proto", "config", "clikit", "gc_policy", "aiotasks", "http_guard",
                "__init__"},
    "cluster": {"gateway", "firmware", "abci_app", "chain", "proto", "config", "clikit", "gc_policy",
                "aiotasks", "http_guard", "__init__"},
    # the SDK's public face (edgistry.client): the gateway part and below; nothing imports it
    "client": {"gateway", "firmware", "abci_app", "chain", "proto", "config", "clikit", "gc_policy", "__init__"},
    "cli": {"textsafe"},  # lazy: it names command modules as strings, never imports them
    "__main__": {"cli"},
}


def _package_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (the repository root)."""
    out = {}
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in NOT_PACKAGE and not d.startswith(".")
                   and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(".py"):
                rel = Path(dirpath, name).relative_to(ROOT)
                parts = list(rel.with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(["edgistry", *parts])] = rel
    return out


FILES = _package_files()


def _imports(module: str, rel: Path) -> tuple[set[str], list[str]]:
    """(package modules ``module`` imports at any depth, absolute edgistry imports)."""
    tree = ast.parse((ROOT / rel).read_text())
    package = module if rel.name == "__init__.py" else module.rpartition(".")[0]
    found, absolute = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
                if target.split(".")[0] == "edgistry":
                    absolute.append(f"{rel}:{node.lineno}")
            if target.split(".")[0] != "edgistry":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in FILES else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edgistry":
                    absolute.append(f"{rel}:{node.lineno}")
                    found.add(alias.name)
    return {m for m in found if m in FILES and m != module}, absolute


GRAPH = {m: _imports(m, rel)[0] for m, rel in FILES.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_graph_is_read_from_the_tree():
    """The reader sees the package's real edges (a check that cannot pass on an empty graph)."""
    assert len(FILES) > 100
    assert "edgistry.gateway.store.store" in GRAPH["edgistry.gateway.app"]
    assert "edgistry.firmware.link.link_wire" in GRAPH["edgistry.firmware.link.link_device"]


def test_no_import_cycles_between_modules():
    """No module reaches itself through its imports (imports inside functions count)."""
    assert _cycles(GRAPH) == []


def test_no_import_cycles_between_parts():
    """The parts (top-level folders and root modules) form a DAG too."""
    parts: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        parts.setdefault(part_of(module), set()).update(part_of(t) for t in targets if part_of(t) != part_of(module))
    assert _cycles(parts) == []


def test_dependencies_point_one_way():
    """firmware <- gateway <- cluster; abci_app imports neither gateway nor cluster; shared root
    modules import nothing above them; nothing but __main__ imports the entry point."""
    assert set(map(part_of, FILES)) <= set(ALLOWED), "a new part needs its row in ALLOWED"
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if part_of(t) != part_of(m) and part_of(t) not in ALLOWED[part_of(m)])
    assert wrong == []


def test_imports_inside_the_package_are_relative():
    """Every import of the package from inside it is relative, so tools can draw the graph."""
    absolute = [hit for m, rel in FILES.items() for hit in _imports(m, rel)[1]]
    assert absolute == []


@pytest.mark.parametrize("package", ["", "firmware", "firmware/caplets", "firmware/device", "firmware/link", "firmware/runtime"])
def test_device_side_init_files_import_nothing(package):
    """A board loads the device tree as packages: its __init__ files must stay light."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_wheel_contains_exactly_the_package(tmp_path):
    """The wheel holds the edgistry package (modules, stubs, .proto, accelerators) and its
    metadata: no setup script, tests, benchmarks or docs."""
    had_build = (ROOT / "build").exists()
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                 "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    finally:
        if not had_build:  # setuptools builds in the tree: leave it as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("edgistry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"edgistry", "edgistry-0.1.0.dist-info"}
    modules = {n for n in names if n.endswith(".py")}
    expected = {"edgistry/" + str(rel) for rel in FILES.values()}
    assert modules == expected
    others = sorted(n for n in names if not n.startswith("edgistry-") and not n.endswith(".py"))
    assert all(n.endswith((".pyi", ".proto", ".so")) for n in others), others
    accelerators = {n.rsplit("/", 1)[1].split(".")[0] for n in others if n.endswith(".so")}
    assert accelerators <= {"_capscan", "_linkwire", "_lthash"}
