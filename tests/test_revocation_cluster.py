"""Revocation played as an adversary on 4 real CometBFT validators (`edgistry cluster up
--fast`: cometbft + `edgistry node` + `edgistry gateway` per node, on loopback), with a
device paired at node2's gateway and woken in this process (so its runs are counted):

  (a) queued work (a toggle and 8 reads, two tokens) never runs after `token revoke` returns;
  (b) a request forwarded by node0 to node2, revoked with `--wait-all` at node0: it never
      runs, its client is refused at node0, the owner reads REVOKED at node2;
  (c) every submit through node0 (forwarded) after `token revoke` at node0 returns is refused;
  (d) a cached answer is not served to the token once revoked;
  (e) a child derived from a revoked token is refused through node1 and at node2;
  (f) every block's txs and results and the revocation queries hold hashes, never tags.

Runs when cometbft is on PATH or EDGISTRY_COMETBFT names it; skipped with how to get one
otherwise. Every process is killed by pid at teardown (`cluster down`)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import revocation_helpers as rh
from cluster_helpers import Procs, free_base_port, wait_until
from edgistry.cluster import ops
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.localnet import load_localnet

BINARY = find_cometbft()
pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET),
]
NODES = 4


@pytest.fixture
def cluster(tmp_path: Path, procs: Procs):
    directory = tmp_path / "net"
    base = free_base_port(10 * NODES)
    try:
        out = rh.cli_ok("cluster", "up", "--nodes", str(NODES), "--dir", str(directory), "--fast",
                        "--base-port", str(base), "--wait", "90")
        assert f"{NODES} nodes agree at height" in out
        procs.logs.extend(sorted((directory / "logs").glob("*.log")))
        nodes = load_localnet(directory)
        yield [rh.Gw(n.edgistry_home, n.grpc_endpoint, n.rpc_url) for n in nodes], nodes
    finally:
        stopped = ops.down(directory)
        assert not any(o.startswith("still running") for o in stopped.values()), stopped


def test_revocation_holds_end_to_end_on_four_validators(cluster, tmp_path: Path):
    """(a)-(f) of the module docstring, on one cluster."""
    gws, nodes = cluster
    dev = rh.pair(tmp_path, "dev", gws[2], nodes[2].edgistry_home / "commission.code")
    wait_until(lambda: _located(gws[0], dev), 20, "node0 to learn where the device is")
    rh.queued_work_never_runs(gws[2], dev)                                          # (a)

    token = dev.owner()                                                            # (b)
    fwd = rh.submit(gws[0], dev, "actuator.set", token, b'{"on": true}')
    out = rh.revoke(gws[0], token, "--wait-all")
    assert "4 gateway(s)" in out
    assert dev.wake().executed == 0
    err = rh.refusal(lambda: rh.result(gws[0], fwd.request_id, token))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rh.result(gws[2], fwd.request_id, dev.root).state == rh.REVOKED

    rh.submit_right_after_revoke(gws[0], dev)                                      # (c)
    rh.cached_answers_not_served(gws[2], dev)                                      # (d)
    rh.children_of_a_revoked_token(gws[1], dev)                                    # (e)
    rh.children_of_a_revoked_token(gws[2], dev)
    assert rh.chain_holds_no_raw_tag(gws[3].rpc, [token]) > 1                      # (f)


def _located(g: rh.Gw, dev: rh.Dev) -> bool:
    """node0's registry replica knows the device (a forward reaches node2, which refuses
    an expired token: nothing is queued)."""
    try:
        rh.submit(g, dev, "sensor.info", rh.cl.derive(dev.root, [rh.cl.Service("sensor", ["*"])], [rh.cl.ExpiresAt(1)]))
        return True
    except grpc.RpcError as exc:
        return exc.code() != grpc.StatusCode.NOT_FOUND
