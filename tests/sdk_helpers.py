"""A live Edgistry for SDK and CLI tests: `edgistry up --demo-devices N` as its own process on
free ports (embedded node, gateway, demo devices that wake every few seconds), an application
token minted by `edgistry token app`, and the owner token of a demo actuator."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from click.testing import CliRunner

from edgistry.cli import main
from proc_helpers import edgistry, free_port, kill9, stop

READY = "stop with Ctrl-C"  # the last line `up` prints once everything runs
DEMO_NEAR = (52.52, 13.405)  # gateway/demo.py's fleet centre
DEMO_RADIUS_KM = 8


@dataclass
class DemoNode:
    home: Path
    ports: dict[str, int]
    proc: Popen
    log: Path
    app_token: Path
    actuator_handle: str
    owner_token: Path

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def pin(self) -> Path:
        """The gateway's certificate: what clients pin (``--pin``, ``pin=``)."""
        return self.home / "keys" / "tls.crt"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['rpc']}"

    def stop(self) -> int | None:
        try:
            return stop(self.proc)
        finally:
            kill9(self.proc)


def start_demo_node(directory: Path, devices: int = 3, timeout: float = 60.0) -> DemoNode:
    """Start the node and wait until its banner says it runs; fails with the log otherwise."""
    ports = {name: free_port() for name in ("rpc", "grpc", "link", "http", "peer")}
    home, log = directory / "home", directory / "up.log"
    args = ["up", "--home", str(home), "--demo-devices", str(devices)]
    args += [f"--{name}-listen=127.0.0.1:{port}" for name, port in ports.items()]
    proc = edgistry(*args, log=log)
    try:
        deadline = time.monotonic() + timeout
        while READY not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`edgistry up` did not start:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.1)
        minted = CliRunner().invoke(main, ["token", "app", "--home", str(home), "--name", "sdk-tests"])
        assert minted.exit_code == 0, minted.output
        app_token = directory / "app.token"
        app_token.write_text(minted.stdout)
        found = re.search(r"edgistry invoke (\S+) actuator\.toggle --gateway \S+ --token (\S+) --pin \S+",
                          log.read_text())
        assert found, log.read_text()
        node = DemoNode(home, ports, proc, log, app_token, found.group(1), Path(found.group(2)))
        _wait_discovery_settles(node, deadline)
        return node
    except BaseException:
        kill9(proc)
        raise


def _wait_discovery_settles(node: DemoNode, deadline: float) -> None:
    """Until the gateway's replica holds the whole demo fleet: two answers a moment apart agree."""
    from edgistry.client import Client

    previous = None
    with Client(node.grpc, token=node.app_token, pin=node.pin) as client:
        while True:
            answer = sorted(h.cell for page in client.discover("sensor", DEMO_NEAR, DEMO_RADIUS_KM) for h in page)
            if answer and answer == previous:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"discovery did not settle: {previous} then {answer}")
            previous = answer
            time.sleep(0.5)
