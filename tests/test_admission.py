"""Admission control's pure core (gateway/admission.py) and the [limits] table, with an injected clock."""

from __future__ import annotations

import pytest

from edgistry.config import HomeError, Limits, NodeConfig
from edgistry.gateway.admission import Admission, Buckets, ConnectionCaps, is_loopback, source_key
from edgistry.gateway.health import Health
from edgistry.gateway.watchdog import block_age_s, chain_verdict


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# (rate, burst, [(advance_s, cost, expected wait)])
BUCKET_CASES = [
    (10.0, 2.0, [(0, 1, 0.0), (0, 1, 0.0), (0, 1, 0.1)]),           # burst spent, then 1 token = 0.1 s
    (10.0, 2.0, [(0, 2, 0.0), (0.05, 1, 0.05), (0.05, 1, 0.0)]),    # refills at the rate
    (10.0, 2.0, [(0, 1, 0.0), (100, 1, 0.0), (0, 1, 0.0), (0, 1, 0.1)]),  # never beyond the burst
    (1.0, 4.0, [(0, 10, 0.0), (0, 1, 1.0)]),                         # a cost above the burst takes a full bucket
    (0.0, 1.0, [(0, 1, 0.0)] * 5),                                   # rate 0: the limit is off
]


@pytest.mark.parametrize("rate,burst,steps", BUCKET_CASES)
def test_token_bucket_table(rate, burst, steps):
    """A bucket admits up to its burst, refills at its rate, and a refused take spends nothing."""
    clock = Clock()
    b = Buckets(rate, burst, 16)
    for advance, cost, wait in steps:
        clock.t += advance
        assert b.take("k", clock.t, cost) == pytest.approx(wait)


def test_bucket_table_is_bounded_and_forgets_the_least_recently_used():
    """Beyond max_keys the least recently used key goes; a forgotten key comes back full."""
    b = Buckets(1.0, 1.0, 3)
    for k in "abc":
        assert b.take(k, 0.0) == 0.0
    b.take("a", 0.0)  # touch a: b is now the oldest
    assert b.take("d", 0.0) == 0.0
    assert len(b) == 3
    assert b.take("b", 0.0) == 0.0  # forgotten, so full again
    assert b.take("a", 0.0) > 0  # a stayed, still empty


@pytest.mark.parametrize("peer,key,loopback", [
    ("ipv4:127.0.0.1:5000", "127.0.0.1", True),
    ("ipv4:10.1.2.3:1", "10.1.2.3", False),
    ("ipv6:[::1]:80", "::1", True),
    ("ipv6:[2001:db8::1:2:3:4]:9", "2001:db8::/64", False),     # a host holds a /64: one key
    ("ipv6:[2001:db8::ffff:1]:9", "2001:db8::/64", False),
    ("ipv6:[::ffff:10.0.0.1]:3", "10.0.0.1", False),             # IPv4-mapped keys as IPv4
    ("ipv6:[fe80::1%eth0]:3", "fe80::/64", False),
    ("10.9.8.7", "10.9.8.7", False),                              # a bare address (the link server)
    ("unix:/tmp/sock", "unix:/tmp/sock", True),
    ("garbage", "garbage", False),
])
def test_source_keys(peer, key, loopback):
    """gRPC peer strings and bare addresses key by address (IPv6 by /64)."""
    assert source_key(peer) == key
    assert is_loopback(source_key(peer)) is loopback


def limits(**kw) -> Limits:
    return Limits(**kw)


def test_source_bucket_refuses_with_a_retry_hint_and_counts_the_reason():
    """A source beyond its rate is refused with the time until a token is back; others are not."""
    clock = Clock()
    adm = Admission(limits(source_rate=10, source_burst=2), clock)
    assert adm.source("1.1.1.1") is None and adm.source("1.1.1.1") is None
    r = adm.source("1.1.1.1")
    assert r.reason == "source" and r.retry_after_ms == 100 and "retry in 100 ms" in r.message
    assert adm.source("2.2.2.2") is None
    assert adm.source("3.3.3.3", cost=5) is None  # a batch of 5 against a burst of 2: a full bucket pays
    assert adm.source("3.3.3.3") is not None
    assert adm.refusals == {"source": 2}


def test_caller_charges_client_and_device_both_or_neither():
    """A refused caller spends neither bucket: the device's budget is left to others."""
    clock = Clock()
    adm = Admission(limits(client_rate=1, client_burst=1, device_rate=1, device_burst=2), clock)
    assert adm.caller(b"alice", b"dev1") is None
    r = adm.caller(b"alice", b"dev1")  # alice is out; dev1 still has a token
    assert r.reason == "client"
    assert adm.caller(b"bob", b"dev1") is None  # ...which bob gets
    r = adm.caller(b"carol", b"dev1")
    assert r.reason == "device" and r.retry_after_s == pytest.approx(1.0)
    assert adm.caller(b"carol", b"dev2") is None  # carol's own bucket was not charged by the refusal
    assert adm.refusals == {"client": 1, "device": 1}


@pytest.mark.parametrize("waiting,cap_field", [(False, "max_in_flight"), (True, "max_waiting")])
def test_calls_in_flight_are_bounded_per_kind(waiting, cap_field):
    """Beyond the bound a call is refused at once; leaving makes room; the other kind is unaffected."""
    adm = Admission(limits(**{cap_field: 2}), Clock())
    assert adm.enter(waiting) is None and adm.enter(waiting) is None
    r = adm.enter(waiting)
    assert r is not None and r.reason == ("waiting" if waiting else "in_flight")
    assert adm.enter(not waiting) is None
    adm.leave(waiting)
    assert adm.enter(waiting) is None


def test_commissioning_attempts_are_limited_per_source_and_in_total_but_not_for_loopback():
    """Each source gets its burst, all remote sources share the total, loopback (the node itself) is exempt."""
    clock = Clock()
    adm = Admission(limits(commission_source_rate=0.01, commission_source_burst=2,
                           commission_total_rate=0.01, commission_total_burst=3), clock)
    assert adm.commission("10.0.0.1") is None and adm.commission("10.0.0.1") is None
    assert adm.commission("10.0.0.1").reason == "commission"  # per source
    assert adm.commission("10.0.0.2") is None  # total now 3
    assert adm.commission("10.0.0.3").reason == "commission"  # total spent by others
    for _ in range(2):  # the owner on the node itself is not locked out by a remote flood
        assert adm.commission("127.0.0.1") is None
    clock.t += 100  # one token back in each bucket
    assert adm.commission("10.0.0.3") is None


def test_connection_caps_per_source_and_total():
    """Connections beyond the per-source or the total cap are refused, and released ones make room."""
    caps = ConnectionCaps(per_source=2, total=3)
    assert caps.admit("a") is None and caps.admit("a") is None
    assert caps.admit("a") == "link_source"
    assert caps.admit("b") is None
    assert caps.admit("c") == "link_total"
    caps.release("a")
    assert caps.admit("c") is None and caps.count == 3
    for k in ("a", "b", "c"):
        caps.release(k)
    assert caps.count == 0 and not caps.open


def test_limits_round_trip_through_config_toml(tmp_path):
    """The [limits] table is saved and loaded with the node config; unset keys keep their defaults."""
    cfg = NodeConfig(home=tmp_path)
    cfg.limits.client_rate = 5.5
    cfg.limits.max_in_flight = 7
    cfg.save()
    assert "[limits]" in cfg.config_path.read_text()
    back = NodeConfig.load(tmp_path)
    assert back.limits.client_rate == 5.5 and back.limits.max_in_flight == 7
    assert back.limits.device_rate == Limits().device_rate


@pytest.mark.parametrize("table,why", [
    ('[limits]\nno_such = 1\n', "unknown limit"),
    ('[limits]\nmax_in_flight = 1.5\n', "non-negative int"),
    ('[limits]\nclient_rate = -1\n', "non-negative"),
    ('[limits]\nclient_rate = "fast"\n', "non-negative"),
    ('limits = 3\n', "must be a table"),
])
def test_bad_limits_are_refused_with_the_key_named(tmp_path, table, why):
    """A typo or a wrong type in [limits] stops the node with a one-line error naming it."""
    (tmp_path / "config.toml").write_text(table)
    with pytest.raises(HomeError, match=why):
        NodeConfig.load(tmp_path)


def test_health_counts_each_onset_once_and_clears_by_cause():
    """A fault is counted at its onset, keeps its start time while it lasts, and clears alone."""
    seen: list[str] = []
    clock = Clock()
    h = Health(on_fault=seen.append, clock=clock)
    h.fail("disk_full", "full")
    clock.t += 5
    h.fail("disk_full", "still full")
    h.fail("chain_unreachable", "gone")
    assert seen == ["disk_full", "chain_unreachable"] and not h.ok
    assert h.report()[1] == {"cause": "disk_full", "reason": "still full", "for_s": 5.0}
    h.clear("disk_full")
    assert h.active() == {"chain_unreachable": "gone"}
    h.clear("chain_unreachable")
    assert h.ok


@pytest.mark.parametrize("status,cause", [
    (ConnectionError("refused"), "chain_unreachable"),
    ({"sync_info": {"latest_block_time": "2024-01-01T00:00:00.123456789Z", "latest_block_height": "9"}},
     "chain_lagging"),
    ({"sync_info": {"latest_block_time": "2024-01-01T00:09:50Z"}}, None),
    ({"sync_info": {"latest_block_time": "2024-01-01T00:09:50Z", "catching_up": True}}, "chain_lagging"),
    ({"sync_info": {"latest_block_time": ""}}, None),  # no block yet: not a lag
])
def test_chain_verdicts(status, cause):
    """No answer is unreachable; a stale latest block or catching up is lagging; a fresh block is fine."""
    now = block_age_s("2024-01-01T00:10:00Z", 0.0) * -1  # 00:10:00 as a timestamp
    verdict = chain_verdict(status, now, stale_s=60)
    assert (verdict[0] if verdict else None) == cause
