"""The committed registry's devices, indexed for discovery (pure core, no I/O).

Theory of operation
-------------------
Per service type, devices are grouped bottom-up over the H3 hierarchy so that
every disclosed group is large enough for *all* its members:

* ``own[c]``: devices whose policy cell is ``c`` (a cell at the device's policy
  resolution: the chain never holds anything finer);
* at each cell ``a`` (finest first) the *pending* devices are ``own[a]`` plus
  the leftovers of ``a``'s children. Sorted by ``(k, pseudonym)``, the group is
  the longest prefix whose largest ``k`` is at most its length; the rest is
  ``a``'s leftover and moves up to the parent;
* leftovers of resolution-0 cells are *withheld*: never disclosed.

So a device is disclosed at one cell (its *disclosure cell*): an ancestor of its
policy cell (never finer than its policy), shared with at least ``k`` devices of
the same type, each of which tolerates a group that size. The assignment depends
on the registry only, never on a query, so no sequence of queries can move it.

A change to one device re-settles the cells on its ancestor path only (finest
first, stopping where a cell's leftover is unchanged): O(16 * group size).

For queries, the group keys of a type are kept sorted in subtree order (see
:mod:`regions`), so "groups inside cell C" is two bisections, and ``dcount[c]``
holds how many disclosed devices lie inside ``c`` (at every resolution up to the
group's), so a region's candidate count costs one lookup per region cell.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .regions import KEY_MASK, MAX_RES, Region, parent, resolution, subtree_range
from ...proto import registry_pb2 as pb


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """One service a device offers: its type, methods, and which of them mutate."""

    type: str
    methods: frozenset[str]
    mutating: frozenset[str]


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """What discovery needs of one committed DeviceRecord."""

    pseudonym: bytes
    gateway_id: str
    services: tuple[ServiceInfo, ...]
    cell: int
    k: int
    duty_cycle_s: int
    last_seen: int

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(s.type for s in self.services)

    def service(self, stype: str) -> ServiceInfo | None:
        for s in self.services:
            if s.type == stype:
                return s
        return None


_INTERN: dict[tuple, tuple[ServiceInfo, ...]] = {}


def entry_from_record(rec: pb.DeviceRecord) -> DeviceEntry:
    """A DeviceEntry from a committed record (service tuples are interned: 1M devices share few)."""
    sig = tuple((s.type, tuple((m.name, m.mutating) for m in s.methods)) for s in rec.services)
    services = _INTERN.get(sig)
    if services is None:
        services = tuple(ServiceInfo(t, frozenset(n for n, _ in ms), frozenset(n for n, mut in ms if mut))
                         for t, ms in sig)
        _INTERN[sig] = services
    return DeviceEntry(rec.pseudonym, rec.gateway_id, services, rec.cell, max(1, rec.policy.k),
                       rec.duty_cycle_s, rec.last_seen)


class Group:
    """Devices of one type disclosed together at one cell (at least max k of them)."""

    __slots__ = ("cache", "cell", "key", "max_k", "members")

    def __init__(self, cell: int, members: tuple[bytes, ...], max_k: int) -> None:
        self.cell, self.key, self.members, self.max_k = cell, cell & KEY_MASK, members, max_k
        self.cache: tuple | None = None  # discovery's per-group attribute buckets

    def __len__(self) -> int:
        return len(self.members)


def split(pending: Iterable[bytes], k_of: Callable[[bytes], int]) -> tuple[tuple[bytes, ...], tuple[bytes, ...], int]:
    """(group, leftover, max k of the group): the longest (k, pseudonym)-sorted prefix whose
    largest k is at most its length."""
    ordered = sorted(pending, key=lambda p: (k_of(p), p))
    best = 0
    for i, p in enumerate(ordered, 1):
        if k_of(p) <= i:
            best = i
    return tuple(ordered[:best]), tuple(ordered[best:]), (k_of(ordered[best - 1]) if best else 0)


def _children(cell: int) -> list[int]:
    """The seven child indexes of ``cell`` (pentagons' missing child included: it never matches)."""
    res = resolution(cell)
    if res >= MAX_RES:
        return []
    shift = 3 * (MAX_RES - res - 1)
    base = ((cell & ~(0xF << 52)) | ((res + 1) << 52)) & ~(7 << shift)
    return [base | (d << shift) for d in range(7)]


def _ancestors(cell: int) -> list[int]:
    return [parent(cell, r) for r in range(resolution(cell), -1, -1)]


@dataclass
class Plan:
    """The groups of one type intersecting a region, and its candidate count."""

    keys: list[int]
    groups: dict[int, Group]
    spans: list[tuple[int, int]]  # [lo, hi) index ranges into ``keys``
    starts: list[int]  # position of each span's first group
    extra: list[Group]  # groups at strict ancestors of region cells
    candidates: int  # devices whose disclosure (or withheld base) cell meets the region

    @property
    def total(self) -> int:
        return (self.starts[-1] + self.spans[-1][1] - self.spans[-1][0] if self.spans else 0) + len(self.extra)

    def group_at(self, pos: int) -> Group:
        spanned = self.total - len(self.extra)
        if pos >= spanned:
            return self.extra[pos - spanned]
        i = bisect.bisect_right(self.starts, pos) - 1
        return self.groups[self.keys[self.spans[i][0] + pos - self.starts[i]]]


EMPTY_PLAN = Plan([], {}, [], [], [], 0)


@dataclass
class TypeIndex:
    """Groups of one service type (see the module's theory of operation)."""

    stype: str
    own: dict[int, set[bytes]] = field(default_factory=dict)
    leftover: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)  # by key
    keys: list[int] = field(default_factory=list)  # sorted group keys
    dcount: dict[int, int] = field(default_factory=dict)  # cell -> disclosed devices inside
    withheld: dict[int, int] = field(default_factory=dict)  # base cell -> withheld devices
    disclosure: dict[bytes, int] = field(default_factory=dict)  # pseudonym -> disclosure cell

    # ---- maintenance ----

    def _count(self, cell: int, delta: int) -> None:
        for a in _ancestors(cell):
            n = self.dcount.get(a, 0) + delta
            if n:
                self.dcount[a] = n
            else:
                self.dcount.pop(a, None)

    def _set_group(self, cell: int, members: tuple[bytes, ...], max_k: int) -> bool:
        k = cell & KEY_MASK
        old = self.groups.get(k)
        if old is not None and old.members == members:
            return False
        if old is not None:
            del self.groups[k]
            del self.keys[bisect.bisect_left(self.keys, k)]
            self._count(cell, -len(old))
            for p in old.members:
                if self.disclosure.get(p) == cell:
                    del self.disclosure[p]
        if members:
            self.groups[k] = Group(cell, members, max_k)
            bisect.insort(self.keys, k)
            self._count(cell, len(members))
            for p in members:
                self.disclosure[p] = cell
        return True

    def _set_leftover(self, cell: int, left: tuple[bytes, ...]) -> bool:
        old = self.leftover.get(cell, ())
        if old == left:
            return False
        if left:
            self.leftover[cell] = left
        else:
            self.leftover.pop(cell, None)
        if resolution(cell) == 0:
            n = self.withheld.get(cell, 0) - len(old) + len(left)
            if n:
                self.withheld[cell] = n
            else:
                self.withheld.pop(cell, None)
        return True

    def settle(self, cell: int, k_of: Callable[[bytes], int]) -> bool:
        """Recompute groups on ``cell``'s ancestor path; True when any group changed."""
        changed = False
        for a in _ancestors(cell):
            pending = list(self.own.get(a, ()))
            for ch in _children(a):
                left = self.leftover.get(ch)
                if left:
                    pending.extend(left)
            group, left, max_k = split(pending, k_of)
            changed |= self._set_group(a, group, max_k)
            if not self._set_leftover(a, left):
                break
        return changed

    def bulk(self, devices: Iterable[tuple[int, bytes]], k_of: Callable[[bytes], int]) -> None:
        """Build from scratch from (policy cell, pseudonym) pairs (the initial load)."""
        levels: list[dict[int, list[bytes]]] = [{} for _ in range(MAX_RES + 1)]
        for cell, p in devices:
            self.own.setdefault(cell, set()).add(p)
            levels[resolution(cell)].setdefault(cell, []).append(p)
        for r in range(MAX_RES, -1, -1):
            up = levels[r - 1] if r else None
            for a, pending in levels[r].items():
                group, left, max_k = split(pending, k_of)
                if group:
                    self.groups[a & KEY_MASK] = Group(a, group, max_k)
                    for p in group:
                        self.disclosure[p] = a
                if left:
                    self.leftover[a] = left
                    if up is not None:
                        up.setdefault(parent(a, r - 1), []).extend(left)
                    else:
                        self.withheld[a] = len(left)
        self.keys = sorted(self.groups)
        counts: dict[int, int] = {}
        for g in self.groups.values():
            n = len(g.members)
            for a in _ancestors(g.cell):
                counts[a] = counts.get(a, 0) + n
        self.dcount = counts

    # ---- queries ----

    def plan(self, region: Region) -> Plan:
        """Groups whose disclosure cell meets the region (inside or containing a region cell)."""
        keys, groups = self.keys, self.groups
        spans: list[tuple[int, int]] = []
        starts: list[int] = []
        total = 0
        candidates = 0
        bases: set[int] = set()
        level: set[int] = set()
        for q in region.cells:
            n = self.dcount.get(q)
            bases.add(parent(q, 0))
            if resolution(q):
                level.add(q)
            if not n:
                continue
            candidates += n
            lo, hi = subtree_range(q)
            i = bisect.bisect_left(keys, lo)
            j = bisect.bisect_right(keys, hi, i)
            if j > i:
                spans.append((i, j))
                starts.append(total)
                total += j - i
        extra: dict[int, Group] = {}
        # strict ancestors of the region's cells, one level at a time (they collapse fast)
        while level:
            up: set[int] = set()
            for c in level:
                r = resolution(c) - 1
                a = parent(c, r)
                if a in up:
                    continue
                up.add(a)
                g = groups.get(a & KEY_MASK)
                if g is not None and g.key not in extra:
                    extra[g.key] = g
            level = {a for a in up if resolution(a)}
        for g in extra.values():
            candidates += len(g.members)
        for b in bases:
            candidates += self.withheld.get(b, 0)
        return Plan(keys, groups, spans, starts, list(extra.values()), candidates)


class RegistryIndex:
    """All committed devices by pseudonym, and a :class:`TypeIndex` per service type.

    ``version`` grows with every change to any group (Watch and caches key on it);
    ``liveness_version`` with every change of a device's last_seen.
    """

    def __init__(self) -> None:
        self.entries: dict[bytes, DeviceEntry] = {}
        self.types: dict[str, TypeIndex] = {}
        self.gateways: dict[str, str] = {}  # gateway id -> endpoint
        self.height = 0
        self.version = 0
        self.liveness_version = 0

    def k_of(self, pseudonym: bytes) -> int:
        return self.entries[pseudonym].k

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, entries: Iterable[DeviceEntry], height: int = 0) -> None:
        """Replace everything with ``entries`` (bulk build, the initial load)."""
        self.entries = {e.pseudonym: e for e in entries}
        by_type: dict[str, list[tuple[int, bytes]]] = {}
        for e in self.entries.values():
            for t in e.types:
                by_type.setdefault(t, []).append((e.cell, e.pseudonym))
        self.types = {}
        for t, devs in by_type.items():
            ti = TypeIndex(t)
            ti.bulk(devs, self.k_of)
            self.types[t] = ti
        self.height = height
        self.version += 1
        self.liveness_version += 1

    def upsert(self, entry: DeviceEntry) -> bool:
        """Add or replace one device; True when any disclosure changed."""
        old = self.entries.get(entry.pseudonym)
        if old == entry:
            return False
        if old is not None and (old.cell, old.k, old.types) == (entry.cell, entry.k, entry.types):
            self.entries[entry.pseudonym] = entry  # liveness or duty cycle only
            self.liveness_version += 1
            return False
        if old is not None:
            self._detach(old)
        self.entries[entry.pseudonym] = entry
        for t in entry.types:
            ti = self.types.get(t)
            if ti is None:
                ti = self.types[t] = TypeIndex(t)
            ti.own.setdefault(entry.cell, set()).add(entry.pseudonym)
        changed = False
        # the old path first: a stale leftover must leave before the new path settles
        paths = [(t, old.cell) for t in old.types] if old is not None else []
        paths += [(t, entry.cell) for t in entry.types if (t, entry.cell) not in paths]
        for t, cell in paths:
            changed |= self.types[t].settle(cell, self.k_of)
        self.version += 1
        self.liveness_version += 1
        return changed

    def _detach(self, old: DeviceEntry) -> None:
        for t in old.types:
            own = self.types[t].own.get(old.cell)
            if own is not None:
                own.discard(old.pseudonym)
                if not own:
                    del self.types[t].own[old.cell]

    def remove(self, pseudonym: bytes) -> bool:
        """Forget one device; True when it was known."""
        old = self.entries.get(pseudonym)
        if old is None:
            return False
        self._detach(old)
        del self.entries[pseudonym]
        k_of = self.k_of
        for t in old.types:
            self.types[t].settle(old.cell, k_of)
        self.version += 1
        return True

    def disclosure_cell(self, stype: str, pseudonym: bytes) -> int | None:
        """Where (if anywhere) a device of ``stype`` is disclosed (None: withheld)."""
        ti = self.types.get(stype)
        return None if ti is None else ti.disclosure.get(pseudonym)

    def plan(self, stype: str, region: Region) -> Plan:
        ti = self.types.get(stype)
        return EMPTY_PLAN if ti is None else ti.plan(region)
