"""The store's twin operations (registered in ops.HANDLERS; rules in gateway/twins/model.py).

Each reads the device's Twin record, applies a rule of the model, writes the
record back and keeps the ``wh/`` index (revocation hash -> twins with an
undelivered change made under it) equal to the record's pending hashes, in the same
transaction. The id a twin operation reports as changed is ``w/<link16>``
(:func:`changed_id`): the store's listeners hear of twin changes as they hear
of requests (a request id is 16 bytes, so the two never meet).
"""

from __future__ import annotations

from collections.abc import Container

from . import keys
from .kv import KV
from ..errors import NotFound
from ..twins import model
from ..twins.model import Twin


def changed_id(link_id: bytes) -> bytes:
    """What listeners are told when the twin of ``link_id`` changed."""
    return keys.twin(link_id)


def load(kv: KV, link_id: bytes) -> Twin:
    raw = kv.get(keys.twin(link_id))
    return Twin.load(raw) if raw is not None else Twin()


def _save(kv: KV, link_id: bytes, twin: Twin, before: set[bytes]) -> None:
    after = model.pending_hashes(twin)
    for h in before - after:
        kv.delete(keys.twin_by_hash(h, link_id))
    for h in after - before:
        kv.put(keys.twin_by_hash(h, link_id), b"")
    kv.put(keys.twin(link_id), twin.dump())


def twin_set(ctx, link_id: bytes, changes: list[list], chain: list[bytes], now_ms: int):
    """Desired changes, each (key, compact JSON value or None to delete, expected
    version or None), all or none; returns (key, version) of each."""
    kv = ctx.kv
    if kv.get(keys.device(link_id)) is None:
        raise NotFound("no such device")
    twin = load(kv, link_id)
    before = model.pending_hashes(twin)
    out = model.set_desired(twin, [model.Change(k, v, iv) for k, v, iv in changes], chain, now_ms)
    _save(kv, link_id, twin, before)
    return [[k, v] for k, v in out], [changed_id(link_id)]


def twin_report(ctx, link_id: bytes, applied: int, props: list[list], replace: bool, now_ms: int):
    """A device's report (model.report); returns whether the twin changed."""
    kv = ctx.kv
    if kv.get(keys.device(link_id)) is None:
        return False, []  # unpaired meanwhile
    twin = load(kv, link_id)
    before = model.pending_hashes(twin)
    changed = model.report(twin, applied, [(k, bytes(v)) for k, v in props], replace, now_ms)
    if not changed:
        return False, []
    _save(kv, link_id, twin, before)
    return True, [changed_id(link_id)]


def twin_withdraw(ctx, hashes: list[bytes], now_ms: int):
    """Revoked ``hashes``: withdraw every undelivered change made under them
    (model.withdraw); returns [link id, keys set back] per twin changed."""
    kv = ctx.kv
    revoked: Container[bytes] = frozenset(bytes(h) for h in hashes)
    links = sorted({key[len(keys.TWIN_BY_HASH) + 32:] for h in revoked
                    for key, _ in list(kv.scan(keys.twin_by_hash(h)))})
    out, changed = [], []
    for link in links:
        if kv.get(keys.twin(link)) is None:
            _save_index_only(kv, link, set(revoked))  # entries left behind by a twin that is gone
            continue
        twin = load(kv, link)
        before = model.pending_hashes(twin)
        back = model.withdraw(twin, revoked, now_ms)
        _save(kv, link, twin, before)
        out.append([link, back])
        changed.append(changed_id(link))
    return out, changed


def _save_index_only(kv: KV, link_id: bytes, hashes: set[bytes]) -> None:
    """Drop index entries of a twin that is gone."""
    for h in hashes:
        kv.delete(keys.twin_by_hash(h, link_id))


def forget(kv: KV, link_id: bytes) -> None:
    """The device is unpaired: its twin and its index entries go."""
    raw = kv.get(keys.twin(link_id))
    if raw is None:
        return
    _save_index_only(kv, link_id, model.pending_hashes(Twin.load(raw)))
    kv.delete(keys.twin(link_id))


HANDLERS = {
    "twin_set": twin_set,
    "twin_report": twin_report,
    "twin_withdraw": twin_withdraw,
}
