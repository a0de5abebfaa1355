"""Packaging: generated protobuf code matches proto/, every subpackage is installed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_has_not_drifted():
    """proto/gen.py --check regenerates the code and compares it with the committed files."""
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "gen.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_python_package_is_listed_in_pyproject():
    """Each folder with an __init__.py is an installed edgistry.* package."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"edgistry"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        # not ours: tests and benchmarks, build output, and anything installed into the
        # checkout (a virtualenv, npm packages), which a CI may create there
        if rel.parts and rel.parts[0] in {"tests", "benchmarks", "build", "dist"} or any(
                part.startswith(".") or part in {"node_modules", "site-packages"} for part in rel.parts):
            continue
        if rel.parts:
            found.add("edgistry." + ".".join(rel.parts))
    assert found == listed


def test_cli_help_lists_every_command():
    """`edgistry --help` imports every registered command module."""
    result = subprocess.run([sys.executable, "-m", "edgistry", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("init", "node", "up", "registry"):
        assert name in result.stdout
