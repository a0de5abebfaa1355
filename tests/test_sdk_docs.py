"""docs/SDK.md's examples run as written, each in its own interpreter, against a live node
started here (`edgistry up --demo-devices 3`); only the gateway's and the RPC's ports are
substituted, and the gateway's certificate is where the doc copies it (gateway.pem)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgistry.firmware.caplets import api as cl
from sdk_helpers import start_demo_node

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

DOC = Path(__file__).resolve().parent.parent / "docs" / "SDK.md"
SKIP_MARK = "# not run by the docs test"
DOC_GATEWAY = "127.0.0.1:26670"
DOC_RPC = "http://127.0.0.1:26657"


def examples() -> list[str]:
    """The ```python blocks of docs/SDK.md, in order."""
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_examples_of_every_operation():
    """The examples cover connect, discover, watch, invoke, invoke-any, submit, result,
    watch-result, cancel, batch, asyncio and the error tree (a doc cannot silently shrink)."""
    text = "\n".join(examples())
    for needle in ("Client(", "AsyncClient(", ".discover(", ".watch(", ".invoke(", ".invoke_any(", ".submit(",
                   ".watch_result(", ".wait(", ".cancel(", ".batch(", "Unavailable", "InsecureTransport",
                   "DeadlineExceeded", "TLS.from_file", "Backoff(", 'pin="gateway.pem"', "tls_from_registry",
                   "pin_from_registry(", ".get_twin(", ".set_desired(", ".watch_twin(", "VersionConflict"):
        assert needle in text, needle


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    demo = start_demo_node(tmp_path_factory.mktemp("docs-node"))
    try:
        yield demo
    finally:
        demo.stop()


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_runs(node, tmp_path, index):
    """Example number ``index`` runs to completion and prints what it says it prints."""
    code = examples()[index]
    if code.lstrip().startswith(SKIP_MARK):
        assert "TLS" in code  # only the TLS example needs what the test node does not have
        return
    (tmp_path / "app.token").write_text(node.app_token.read_text())
    (tmp_path / "gateway.pem").write_bytes(node.pin.read_bytes())
    # the twin examples: the demo actuator's owner handle and a token its root grants twin rights
    root = cl.load((node.owner_token.parent / "root.token").read_text())
    (tmp_path / "twin.token").write_text(cl.to_text(cl.derive(root, [cl.Resource("/twin", cl.READ | cl.WRITE)])))
    (tmp_path / "device.handle").write_text(node.actuator_handle)
    script = code.replace(DOC_GATEWAY, node.grpc).replace(DOC_RPC, node.rpc_url)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ})
    assert proc.returncode == 0, f"example {index}:\n{code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), f"example {index} printed nothing"
