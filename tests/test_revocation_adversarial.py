"""Revocation tried as an adversary would, on the embedded node (`edgistry up`: registry,
gateway) with device runtimes woken in this process: queued work never runs after `token
revoke` returns, nothing is accepted or served from cache afterwards, children of a revoked
token are refused by the gateway and by a device fed requests by a lagging gateway, and the
chain never shows a tag. The same scenarios run on 4 validators in test_revocation_cluster.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import revocation_helpers as rh
from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link.link_device import OK, REVOKED
from edgistry.gateway.link.backend import MemoryBackend
from edgistry.gateway.tokens import auth
from gateway_helpers import node_home
from proc_helpers import edgistry, kill9, wait_for_port
from runtime_helpers import GATEWAY_SECRET, Queue, device, make_home, start_server

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture
def net(tmp_path: Path):
    cfg, ports = node_home(tmp_path / "node")
    up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    try:
        wait_for_port(ports["grpc"], proc=up)
        g = rh.Gw(cfg.home, cfg.grpc_listen, cfg.rpc_url)
        yield g, rh.pair(tmp_path, "dev", g, cfg.home / "commission.code")
    finally:
        kill9(up)


@pytest.fixture
def two(tmp_path: Path, net):
    """A second gateway (its own home, `edgistry gateway`) on the same embedded node,
    registered by the admin; the device stays paired with the first."""
    from edgistry.config import load_ed25519_pem, public_bytes

    g, dev = net
    cfg_b, ports_b = node_home(tmp_path / "b")
    cfg_b.rpc_url = g.rpc
    cfg_b.save()
    pub_b = public_bytes(load_ed25519_pem(cfg_b.keys_dir / "gateway.pem"))
    rh.cli_ok("registry", "add-gateway", "--home", str(g.home), "--rpc", g.rpc, "--pubkey", pub_b.hex(),
              "--endpoint", cfg_b.grpc_listen)
    proc = edgistry("gateway", "--home", str(cfg_b.home), "--rpc", g.rpc, log=tmp_path / "b.log")
    try:
        wait_for_port(ports_b["grpc"], proc=proc)
        yield g, rh.Gw(cfg_b.home, cfg_b.grpc_listen, g.rpc), dev
    finally:
        kill9(proc)


def test_forwarded_requests_never_run_after_revoke_at_the_forwarding_gateway(two):
    """Work forwarded by gateway B to the device's gateway A, revoked at B (`revoke` returns
    once in force at B): it never runs, B refuses its client, A's owner reads REVOKED, and
    new forwards through B are refused."""
    a, b, dev = two
    token = dev.owner()
    queued = [rh.submit(b, dev, "actuator.set", token, b'{"on": true}'),
              rh.submit(b, dev, "sensor.info", token)]
    rh.revoke(b, token)
    assert dev.wake().executed == 0
    err = rh.refusal(lambda: rh.result(b, queued[0].request_id, token))
    assert "revocation" in err.details()
    assert [rh.result(a, q.request_id, dev.root).state for q in queued] == [rh.REVOKED] * 2
    for _ in range(5):
        assert "Revoked" in rh.refusal(lambda: rh.submit(b, dev, "sensor.info", token)).details()


def test_queued_requests_never_run_after_revoke(net, tmp_path):
    """A toggle and 8 reads queued, both tokens revoked, the device wakes: 0 runs, the
    client is told why, the owner reads REVOKED (`edgistry result` too), the actuator never toggled."""
    import json

    g, dev = net
    token = dev.owner()
    queued = rh.submit(g, dev, "sensor.info", token)
    rh.revoke(g, token)
    rh.queued_work_never_runs(g, dev)
    owner = tmp_path / "owner.token"
    owner.write_text(cl.to_text(dev.root))
    from click.testing import CliRunner

    from edgistry.cli import main

    shown = CliRunner().invoke(main, ["result", queued.request_id, "--gateway", g.grpc, "--token", str(owner),
                                      "--json"])
    assert shown.exit_code == 1 and json.loads(shown.stdout)["state"] == "REVOKED"  # final, not DONE: exit 1
    code, out = rh.cli("result", queued.request_id, "--gateway", g.grpc, "--token", cl.to_text(token))
    assert code == 1 and "revocation" in out, out


def test_no_submit_is_accepted_once_revoke_returns(net):
    """`token revoke` returns only once in force: every submit after it is refused."""
    rh.submit_right_after_revoke(*net)


def test_cached_answers_are_not_served_to_a_revoked_token(net):
    """A cacheable answer is never served from cache to the token once it is revoked."""
    rh.cached_answers_not_served(*net)


def test_children_of_a_revoked_token_are_refused(net):
    """Deriving from a revoked token (which its tag allows) gets nothing at the gateway."""
    rh.children_of_a_revoked_token(*net)


def test_the_chain_shows_hashes_never_tags(net):
    """Every block's results and events and the revocation queries carry the hash of a
    revoked tag, never the tag (block txs are read on the validators' test)."""
    g, dev = net
    token = dev.owner()
    rh.revoke(g, token)
    assert rh.chain_holds_no_raw_tag(g.rpc, [token], blocks=False) >= 1


def test_wait_all_names_the_gateways_that_lag(net):
    """`--wait-all` waits for every registered gateway; one that cannot be reached is named
    when the wait times out (exit 1), while the revocation is already in force locally."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgistry.abci_app.txs import gateway_id_for
    from proc_helpers import free_port

    g, dev = net
    silent = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    rh.cli_ok("registry", "add-gateway", "--home", str(g.home), "--rpc", g.rpc, "--pubkey", silent.hex(),
              "--endpoint", f"127.0.0.1:{free_port()}")
    token = dev.owner()
    code, out = rh.cli("token", "revoke", cl.to_text(token), "--home", str(g.home), "--rpc", g.rpc,
                       "--wait-all", "--timeout", "1")
    assert code == 1 and gateway_id_for(silent) in out and "unreachable" in out, out
    assert "committed at height" in out
    err = rh.refusal(lambda: rh.submit(g, dev, "sensor.info", token))
    assert "Revoked" in err.details()


def test_a_local_list_revocation_reaches_a_running_gateway(net):
    """`token revoke --list <home>/revoked.json` (no chain): the running gateway applies the
    changed file within a sweep and ends the token's queued work REVOKED."""
    import time

    g, dev = net
    token = dev.owner()
    queued = rh.submit(g, dev, "sensor.info", token)
    rh.cli_ok("token", "revoke", cl.to_text(token), "--list", str(g.home / "revoked.json"))
    deadline = time.monotonic() + 10
    while rh.result(g, queued.request_id, dev.root).state != rh.REVOKED:
        assert time.monotonic() < deadline, "the local list was not applied"
        time.sleep(0.1)
    assert "Revoked" in rh.refusal(lambda: rh.submit(g, dev, "sensor.info", token)).details()
    assert dev.wake().executed == 0


async def test_device_refuses_a_lagging_gateways_request_once_it_has_the_list(tmp_path: Path) -> None:
    """A gateway that has not applied a revocation mints a request token for a child of the
    revoked token; the token carries its client chain's hashes, so the device, once the list
    reaches it (ahead of the work, on the same wake), refuses it; other work still runs."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port)
        q = Queue(backend, home)
        root = cl.load(home.root_token())
        revoked = cl.derive(root, [cl.Service("sensor", ["*"])])
        child = cl.derive(revoked, [cl.Service("sensor", ["info"])])  # anyone holding `revoked` can
        verdict = auth.authorise(child.to_bytes(), "sensor", "info", home.root_token(), GATEWAY_SECRET, "gw",
                                 None, mutating=False)  # the lagging gateway: no list yet
        bad = q.add("sensor", "info", token=child)
        # what the lagging gateway mints: bound to the child's chain hashes
        backend.queues[home.link_id()][-1] = backend.queues[home.link_id()][-1].__class__(
            **{**vars(backend.queues[home.link_id()][-1]),
               "request_token": auth.request_token(home.root_token(), "sensor", "info", b"",
                                                   cl.sequence_now() + 10, verdict.chain)})
        good = q.add("sensor", "info", token=cl.derive(root, [cl.Service("sensor", ["info"])]))
        backend.revoked[home.link_id()] = [cl.revocation_hash(revoked.tag)]  # the list, pushed on wake
        rep = await asyncio.wait_for(device(home).wake_with_fallback(), 20)
        assert backend.answers[bad].status == REVOKED, backend.answers[bad]
        assert backend.answers[good].status == OK and rep.executed == 1
    finally:
        await srv.close()
