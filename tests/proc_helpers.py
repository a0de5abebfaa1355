"""Process helpers for multi-process tests: free ports, bounded waits, kill by pid;
and the C accelerators' guards (built, or a reason) and pure-path reruns."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from types import ModuleType

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def edgistry(*args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m edgistry ARGS`` with output to ``log``; its own process group."""
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "edgistry", *args], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill9(proc)
    return proc.returncode


PURE_RUN = r"""
import importlib
import sys
import pytest
module = importlib.import_module(sys.argv[1])
switch, reference_name = sys.argv[2], sys.argv[3]
setattr(module, switch, None)
calls = [0]
reference = getattr(module, reference_name)
def counted(*a):
    calls[0] += 1
    return reference(*a)
setattr(module, reference_name, counted)
code = pytest.main(sys.argv[4:])
assert getattr(module, switch) is None and calls[0] > 0, "the Python reference did not run"
sys.exit(code)
"""


def run_tests_on_the_pure_path(module: str, switch: str, reference: str, test_files: list[Path]) -> None:
    """Run ``test_files`` in a fresh interpreter with ``module.<switch>`` (a C
    accelerator) set to None, checking that ``module.<reference>`` (the Python
    path) ran; fails the calling test with pytest's output otherwise."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", PURE_RUN, module, switch, reference, "-q", "-x", "-p", "no:cacheprovider",
         *map(str, test_files)],
        cwd=root, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def import_accelerator(name: str) -> ModuleType | None:
    """The C accelerator module ``name``, or None when the install did not build it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def in_ci() -> bool:
    """Whether the CI environment variable is set (CI services set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_accelerator(module: ModuleType | None, name: str) -> None:
    """Fail the calling test when accelerator ``name`` is missing under CI, where
    a C compiler is present and a missing accelerator is a broken build; skip it
    elsewhere, where an install without a compiler is legitimate."""
    if module is not None:
        return
    if in_ci():
        pytest.fail(f"the C accelerator {name} was not built, but CI has a C compiler: the "
                    "build is broken (see the output of pip install)", pytrace=False)
    pytest.skip(f"the C accelerator {name} was not built (no C compiler when installed): "
                "only the pure-Python path exists, and the other tests cover it")


WITHOUT_RUN = r"""
import sys
import pytest
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # an import of it now raises ImportError: as if never built
sys.exit(pytest.main(sys.argv[2:]))
"""


def run_tests_without(accelerators: list[str], test_files: list[Path], ci: bool,
                      select: str) -> subprocess.CompletedProcess:
    """Run the tests of ``test_files`` matching ``-k select`` in a fresh
    interpreter in which the modules ``accelerators`` cannot be imported, with
    the CI environment variable set to "true" or removed."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RUN, ",".join(accelerators), "-q", "-rEfs", "-p",
         "no:cacheprovider", "-k", select, *map(str, test_files)],
        cwd=root, capture_output=True, text=True, timeout=300,
        env=dict(env, PYTHONDONTWRITEBYTECODE="1"))
