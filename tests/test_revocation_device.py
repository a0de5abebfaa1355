"""The revocation list a device keeps: hashes with expiries, pruned when their tokens
expire, bounded in size (the soonest-expiring entry goes, and is counted), durable."""

from __future__ import annotations

from edgistry.firmware.runtime import state as st
from edgistry.firmware.runtime.state import DeviceState


def entry(n: int, expires: int | None) -> bytes:
    h = n.to_bytes(32, "big")
    return h if expires is None else h + expires.to_bytes(8, "big")


def test_expired_revocations_are_pruned_and_expiries_extend(tmp_path):
    """An entry goes once its token expired; a later push of the same hash keeps the later expiry."""
    s = DeviceState(tmp_path / "state.json")
    s.revoke([entry(1, 100), entry(2, 500), entry(3, None)], now_s=50)
    s.revoke([entry(1, 300)], now_s=60)
    s.revoke([], now_s=200)
    assert s.revoked_set() == {entry(1, None), entry(2, None), entry(3, None)}
    s.revoke([], now_s=400)
    assert s.revoked_set() == {entry(2, None), entry(3, None)}
    s.save()
    again = DeviceState(tmp_path / "state.json")
    assert again.revoked_set() == s.revoked_set() and again.revoked == s.revoked


def test_a_full_list_drops_the_soonest_expiring_and_counts_it(tmp_path, monkeypatch):
    """Beyond the bound the entry whose token expires first is dropped (counted in
    revoked_dropped): the list never grows past the bound, the longest-lived stay."""
    monkeypatch.setattr(st, "MAX_REVOKED", 4)
    s = DeviceState(tmp_path / "state.json")
    s.revoke([entry(n, 1000 + n) for n in range(6)] + [entry(9, None)], now_s=0)
    assert len(s.revoked) == 4 and s.revoked_dropped == 3
    assert s.revoked_set() == {entry(n, None) for n in (3, 4, 5, 9)}


def test_an_older_state_with_raw_tags_loads_without_them(tmp_path):
    """A state written before hashes (tag hex strings) loads; its raw tags are not kept."""
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "ticket": null, "last_sequence": 5, "entries": {}, "revoked": ["ab" ]}')
    s = DeviceState(path)
    assert s.revoked == [] and s.last_sequence == 5
