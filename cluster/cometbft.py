"""Finding and driving the ``cometbft`` binary (never shipped with Edgistry)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ENV_VAR = "EDGISTRY_COMETBFT"
HOW_TO_GET = (
    "cometbft was not found: put a CometBFT v0.38 (or v1.x) binary on PATH or name it with "
    f"{ENV_VAR}=/path/to/cometbft (official release binaries: github.com/cometbft/cometbft/releases; "
    "or the container image cometbft/cometbft:v0.38.x)"
)


def find_cometbft() -> str | None:
    """Path of the cometbft binary from EDGISTRY_COMETBFT or PATH, else None."""
    named = os.environ.get(ENV_VAR)
    if named:
        return named if Path(named).is_file() and os.access(named, os.X_OK) else None
    return shutil.which("cometbft")


def cometbft_init(binary: str, home: Path) -> None:
    subprocess.run([binary, "init", "--home", str(home)], capture_output=True, text=True, timeout=60, check=True)


def cometbft_version(binary: str) -> str:
    """The release of a cometbft binary, as ``cometbft version`` prints it ("0.38.25", "1.0.1")."""
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.strip().splitlines()
    if not lines:
        raise ValueError(f"{binary} version printed nothing")
    return lines[0].strip().lstrip("v")
