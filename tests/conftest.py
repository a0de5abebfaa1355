"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

MICROPYTHON_DIR = Path(__file__).parent / "micropython"
NPM_CI_TIMEOUT = 300  # seconds; one small package from the npm registry


class MicroPython:
    """Runs Python scripts under the MicroPython WebAssembly port (Node.js)."""

    def __init__(self, node: str) -> None:
        self.node = node

    def run(self, script: str, modules: list[Path] = (), timeout: float = 120) -> str:
        """Run ``script`` with ``modules`` (files, or package folders copied as trees)
        copied unchanged onto MicroPython's sys.path; return stdout, or fail the
        test with stderr."""
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(script)
        script_file = Path(fh.name)
        try:
            proc = subprocess.run(
                [self.node, "run.mjs", str(script_file), *map(str, modules)],
                cwd=MICROPYTHON_DIR, capture_output=True, text=True, timeout=timeout)
        finally:
            script_file.unlink(missing_ok=True)
        if proc.returncode != 0:
            pytest.fail(f"MicroPython failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
        return proc.stdout


@pytest.fixture(scope="session")
def micropython() -> MicroPython:
    """The MicroPython WebAssembly runner; installs its npm package if needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed to run MicroPython (WebAssembly port)")
    if not (MICROPYTHON_DIR / "node_modules").is_dir():
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=MICROPYTHON_DIR,
                              capture_output=True, text=True, timeout=NPM_CI_TIMEOUT)
        if proc.returncode != 0:
            pytest.fail(f"npm ci failed in {MICROPYTHON_DIR}:\n{proc.stderr}")
    return MicroPython(node)


# ---- multi-process tests (tests/cluster_helpers.py) ----
# Tests run with --import-mode=importlib, so the tests directory is not on
# sys.path by itself; put it there for `import cluster_helpers`.
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cometbft", metavar="BINARY", default=None,
                     help="the cometbft binary (v0.38.x or v1.x) for tests marked cometbft; "
                          "the same as EDGISTRY_COMETBFT=BINARY (name the tests directory too: "
                          "`pytest tests --cometbft BINARY`, so this conftest is read first)")


def pytest_configure(config: pytest.Config) -> None:
    """--cometbft picks the binary (and so the version) every cometbft test runs against."""
    import os

    binary = config.getoption("--cometbft")
    if binary:
        os.environ["EDGISTRY_COMETBFT"] = binary


@pytest.fixture
def procs(tmp_path: Path):
    """Processes a test starts (cluster_helpers.Procs); every one killed at teardown."""
    from cluster_helpers import Procs

    group = Procs(tmp_path / "logs")
    try:
        yield group
    finally:
        group.close()


def in_ci() -> bool:
    """CI runs the suite with CI=true on a machine where .ci/run installed every tool."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the tails of a failing test's process logs to its report; in CI, a skip is
    a failure (.ci/run installs CometBFT, MicroPython, Docker and the rest, so a test
    that skips there is a test that did not run)."""
    outcome = yield
    report = outcome.get_result()
    group = getattr(item, "funcargs", {}).get("procs")
    if report.failed and group is not None:
        report.sections.append(("process logs", group.tails()))
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
