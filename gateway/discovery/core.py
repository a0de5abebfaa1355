"""Privacy-preserving discovery over the replica index (pure: no I/O, no clock of its own).

Rules every answer follows (see :mod:`replica_index` for how groups form):

* a device appears only at its *disclosure cell*: an ancestor of its policy cell
  shared by a group of at least ``k`` devices of the type (for every member's k);
  a device in no such group is never disclosed, and never invoked by invoke-any;
* inclusion is decided by the disclosure cell meeting the region, never by finer
  information, so moving the query around cannot narrow a device;
* per-device attributes (expected-latency class, last contact) are disclosed and
  filtered only through *buckets*: slices of a group, fastest first, each at least
  as large as its members' k and labelled with its slowest class and oldest
  contact, so a filter can drop whole buckets but never single a device out;
* handles are freshly sealed for every answer (see :mod:`handles`), the order of
  an answer is random, and each page mints the page size's worth of handles (real,
  then dummies). The client sees the disclosed ones, so any work that grew with
  the devices the region holds beyond them (even one dummy per withheld device)
  would count the withheld devices in the answer's time.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
from dataclasses import dataclass
from enum import IntEnum

from ..tokens.app_tokens import AppClient
from ..errors import BadRequest, NotFound, Unauthorized
from .handles import NONCE_LEN, BadHandle, HandleCodec
from .regions import Region
from .index import DeviceEntry, Group, Plan, RegistryIndex

DEFAULT_PAGE = 50
MAX_PAGE = 500
HANDLE_TTL_MS = 10 * 60 * 1000
GROUPS_PER_PAGE = 8  # at most this many groups visited per page slot (filters may skip groups)
ANY_SAMPLE_GROUPS = 32  # invoke-any looks at this many random groups of the region
ANY_SAMPLE_MEMBERS = 64  # ... and at most this many random members of each
LIVENESS_BUCKET_S = 300  # the chain's last_seen granularity
_DUMMY_PSEUDONYM = bytes(16)
_CURSOR = struct.Struct(">8sQII")


class Latency(IntEnum):
    """Expected-latency classes, fastest first (0: no filter)."""

    ANY = 0
    IMMEDIATE = 1  # always connected or waking every few seconds
    SECONDS = 2
    MINUTES = 3
    HOURS = 4
    STALE = 5  # not heard of for several duty cycles


def expected_wait_s(entry: DeviceEntry, now_s: int) -> float | None:
    """Seconds until the device is expected to answer, from its duty cycle and last contact;
    None when it has not reported for several cycles (stale)."""
    d = entry.duty_cycle_s
    if entry.last_seen:
        since = now_s - entry.last_seen
        if since > max(3 * d, 1800) + LIVENESS_BUCKET_S:
            return None
        if d >= 2 * LIVENESS_BUCKET_S:  # the phase of a long cycle is known to within a bucket
            return float(d - (since % d))
    return d / 2.0


def latency_class(wait: float | None) -> Latency:
    if wait is None:
        return Latency.STALE
    if wait <= 5:
        return Latency.IMMEDIATE
    if wait <= 60:
        return Latency.SECONDS
    if wait <= 3600:
        return Latency.MINUTES
    return Latency.HOURS


@dataclass(frozen=True)
class Filters:
    """Optional filters: the slowest acceptable class, and last contact within N seconds."""

    max_latency: Latency = Latency.ANY
    seen_within_s: int = 0


@dataclass(frozen=True)
class Bucket:
    members: tuple[bytes, ...]
    label: Latency
    oldest_seen: int

    def passes(self, f: Filters, now_s: int) -> bool:
        if f.max_latency and self.label > f.max_latency:
            return False
        return not f.seen_within_s or self.oldest_seen >= now_s - f.seen_within_s


def buckets(group: Group, entries: dict[bytes, DeviceEntry], now_s: int) -> list[Bucket]:
    """Split a group fastest first into buckets each at least its members' max k, such that what
    remains after each bucket can still form a valid bucket (the whole group always can)."""
    rows = []
    for p in group.members:
        e = entries[p]
        rows.append((latency_class(expected_wait_s(e, now_s)), -e.last_seen, p, e.k))
    rows.sort()
    n = len(rows)
    suffix_ok = [True] * (n + 1)
    kmax = 0
    for i in range(n - 1, -1, -1):
        kmax = max(kmax, rows[i][3])
        suffix_ok[i] = n - i >= kmax
    out, start, cur = [], 0, 0
    for i, row in enumerate(rows):
        cur = max(cur, row[3])
        if i + 1 - start >= cur and suffix_ok[i + 1]:
            part = rows[start:i + 1]
            out.append(Bucket(tuple(r[2] for r in part), max(r[0] for r in part), -max(r[1] for r in part)))
            start, cur = i + 1, 0
    return out


@dataclass(frozen=True)
class HandleInfo:
    """One entry of an answer: what a client may know."""

    handle: str
    cell: int
    latency: Latency
    gateway: str
    expires_at_ms: int


@dataclass(frozen=True)
class Answer:
    handles: list[HandleInfo]
    next_page: str


@dataclass(frozen=True)
class Target:
    """What a handle resolves to at its issuing gateway (never shown to a client)."""

    pseudonym: bytes
    gateway_id: str
    endpoint: str
    service_type: str
    cell: int


def _permutation(seed: int, n: int) -> tuple[int, int]:
    """(a, b) of a permutation i -> (a*i + b) mod n (a coprime to n)."""
    if n <= 1:
        return 1, 0
    a = (seed >> 16) % n or 1
    while math.gcd(a, n) != 1:
        a = a + 1 if a + 1 < n else 1
    return a, seed % n


class DiscoveryService:
    """Discover, resolve, pick-any and watch snapshots for one gateway."""

    def __init__(self, index: RegistryIndex, codec: HandleCodec, gateway_id: str, endpoint: str,
                 rng: random.Random | None = None) -> None:
        self.index, self.codec = index, codec
        self.gateway_id, self.endpoint = gateway_id, endpoint
        self.rng = rng or random.SystemRandom()
        self.pad = True  # mint dummy handles up to the page size: only tests turn it off

    # ---- shared ----

    def _region(self, client: AppClient, stype: str, region: Region) -> Region:
        if not stype:
            raise BadRequest("a service type is required")
        if not client.may_discover(stype):
            raise Unauthorized(f"the token does not grant discovering {stype!r}")
        return region.restrict(client.region) if client.region is not None else region

    def _buckets(self, g: Group, now_s: int) -> list[Bucket]:
        return self._cached(g, now_s)[1]

    def _cached(self, g: Group, now_s: int) -> tuple:
        """(stamp, buckets, {filters: members}) of a group, recomputed when liveness or the minute changes."""
        stamp = (self.index.liveness_version, now_s // 60)
        if g.cache is None or g.cache[0] != stamp:
            g.cache = (stamp, buckets(g, self.index.entries, now_s), {})
        return g.cache

    def _members(self, g: Group, filters: Filters, now_s: int) -> list[tuple[bytes, Latency]]:
        """The group's members passing ``filters`` (whole buckets), with their bucket labels."""
        _, bks, by_filter = self._cached(g, now_s)
        out = by_filter.get(filters)
        if out is None:
            if len(by_filter) >= 8:  # bound the cache: filters vary per client
                by_filter.clear()
            out = by_filter[filters] = [(p, bk.label) for bk in bks if bk.passes(filters, now_s) for p in bk.members]
        return out

    @staticmethod
    def _fingerprint(stype: str, region: Region, f: Filters) -> bytes:
        h = hashlib.sha256(stype.encode() + b"\0" + struct.pack(">BI", f.max_latency, f.seen_within_s))
        for c in sorted(region.cells):
            h.update(c.to_bytes(8, "big"))
        return h.digest()[:8]

    # ---- discover ----

    def discover(self, client: AppClient, stype: str, region: Region, filters: Filters = Filters(),
                 page_size: int = 0, cursor: str = "", now_ms: int = 0) -> Answer:
        """One page of handles for devices of ``stype`` in ``region`` (see the module rules)."""
        region = self._region(client, stype, region)
        page_size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        fp = self._fingerprint(stype, region, filters)
        if cursor:
            try:
                got_fp, seed, pos, sub = _CURSOR.unpack(self.codec.open_cursor(client.client_id, cursor))
            except (BadHandle, struct.error) as exc:
                raise BadRequest("invalid page token") from exc
            if got_fp != fp:
                raise BadRequest("the page token belongs to another query")
        else:
            seed, pos, sub = self.rng.getrandbits(64), 0, 0
        now_s = now_ms // 1000
        plan = self.index.plan(stype, region) if region.cells else Plan([], {}, [], [], [], 0)
        total = plan.total
        a, b = _permutation(seed, total)
        picked: list[tuple[bytes, int, Latency]] = []
        budget = GROUPS_PER_PAGE * page_size
        while pos < total and len(picked) < page_size and budget:
            budget -= 1
            g = plan.group_at((a * pos + b) % total)
            members = self._members(g, filters, now_s)
            room = page_size - len(picked)
            if sub or len(members) > room:  # a group split over pages: one order per query
                m = len(members)
                ga, gb = _permutation(seed ^ g.key, m)
                part = [members[(ga * j + gb) % m] for j in range(sub, min(m, sub + room))]
                sub = sub + room if sub + room < m else 0
            else:
                part = members
            picked.extend((p, g.cell, lab) for p, lab in part)
            if not sub:
                pos += 1
        expires = now_ms + HANDLE_TTL_MS
        cid, mint = client.client_id, self.codec.mint
        n_mint = page_size if self.pad else len(picked)  # (picked never exceeds the page size)
        nonces = os.urandom(NONCE_LEN * n_mint)  # one system call per answer
        out = [HandleInfo(mint(cid, p, cell, stype, expires, nonces[i * NONCE_LEN:(i + 1) * NONCE_LEN]), cell, lab,
                          self.endpoint, expires)
               for i, (p, cell, lab) in enumerate(picked)]
        for i in range(len(out), n_mint):  # padding: the same work however many are withheld
            out.append(HandleInfo(mint(cid, _DUMMY_PSEUDONYM, 0, stype, expires,
                                       nonces[i * NONCE_LEN:(i + 1) * NONCE_LEN]), 0, Latency.ANY, "", expires))
        self.rng.shuffle(out)
        out = [h for h in out if h.cell]  # dummies carry cell 0 (never a valid cell)
        nxt = (self.codec.seal_cursor(cid, _CURSOR.pack(fp, seed, pos, sub)) if pos < total else "")
        return Answer(out, nxt)

    # ---- resolve ----

    def resolve(self, client: AppClient, handle: str, now_ms: int) -> Target:
        """The device behind a handle this gateway gave this client; NotFound otherwise
        (forged, expired, another client's or another gateway's, or a device no longer
        disclosed for that type: its group fell below k, or it left; one error for all)."""
        try:
            claims = self.codec.open(client.client_id, handle, now_ms)
        except BadHandle as exc:
            raise NotFound("no such handle") from exc
        entry = self.index.entries.get(claims.pseudonym)
        if (entry is None or entry.service(claims.service_type) is None
                or self.index.disclosure_cell(claims.service_type, claims.pseudonym) is None):
            raise NotFound("no such handle")
        return Target(entry.pseudonym, entry.gateway_id, self.index.gateways.get(entry.gateway_id, ""),
                      claims.service_type, claims.cell)

    # ---- invoke-any ----

    def pick_any(self, client: AppClient, stype: str, region: Region, method: str,
                 filters: Filters = Filters(), now_ms: int = 0) -> Target:
        """One disclosed device of ``stype`` in ``region`` offering ``method``: the soonest
        expected to answer, at random among equals (spreads load). NotFound if none."""
        region = self._region(client, stype, region)
        plan = self.index.plan(stype, region) if region.cells else None
        total = plan.total if plan else 0
        now_s = now_ms // 1000
        a, b = _permutation(self.rng.getrandbits(64), total)
        best: list[tuple[DeviceEntry, int]] = []
        best_wait = math.inf
        entries = self.index.entries
        for i in range(min(total, ANY_SAMPLE_GROUPS)):
            g = plan.group_at((a * i + b) % total)
            members = self._members(g, filters, now_s)
            if len(members) > ANY_SAMPLE_MEMBERS:
                members = self.rng.sample(members, ANY_SAMPLE_MEMBERS)
            for p, _ in members:
                e = entries[p]
                svc = e.service(stype)
                if svc is None or method not in svc.methods:
                    continue
                if not client.may_invoke(stype, method, method in svc.mutating):
                    continue
                tier = latency_class(expected_wait_s(e, now_s))
                if tier < best_wait:
                    best, best_wait = [(e, g.cell)], tier
                elif tier == best_wait:
                    best.append((e, g.cell))
        if not best:
            raise NotFound(f"no device of type {stype!r} offering {method!r} may be invoked in this region")
        e, cell = self.rng.choice(best)
        return Target(e.pseudonym, e.gateway_id, self.index.gateways.get(e.gateway_id, ""), stype, cell)

    # ---- watch ----

    def snapshot(self, client: AppClient, stype: str, region: Region, filters: Filters,
                 now_ms: int, limit: int = 10_000) -> dict[bytes, tuple[int, Latency]]:
        """Every disclosed device of the region passing the filters: pseudonym -> (cell, class)."""
        region = self._region(client, stype, region)
        if not region.cells:
            return {}
        plan = self.index.plan(stype, region)
        out: dict[bytes, tuple[int, Latency]] = {}
        now_s = now_ms // 1000
        for i in range(plan.total):
            g = plan.group_at(i)
            for bk in self._buckets(g, now_s):
                if bk.passes(filters, now_s):
                    for p in bk.members:
                        out[p] = (g.cell, bk.label)
            if len(out) >= limit:
                break
        return out

    def mint_for(self, client: AppClient, pseudonym: bytes, cell: int, label: Latency, stype: str,
                 now_ms: int, ttl_ms: int = HANDLE_TTL_MS) -> HandleInfo:
        exp = now_ms + ttl_ms
        return HandleInfo(self.codec.mint(client.client_id, pseudonym, cell, stype, exp), cell, label,
                          self.endpoint, exp)


class WatchSession:
    """Appear/leave events for one client's region: successive snapshots, diffed.

    A device appears with a fresh handle; it leaves with the handle it appeared
    with; a device whose disclosure cell changes leaves and appears anew. Events of
    one step are shuffled. Snapshots obey every discovery rule, so events do too.
    """

    APPEAR, LEAVE = "appear", "leave"

    def __init__(self, service: DiscoveryService, client: AppClient, stype: str, region: Region,
                 filters: Filters = Filters(), handle_ttl_ms: int = 24 * 3600 * 1000) -> None:
        self.service, self.client, self.stype, self.region, self.filters = service, client, stype, region, filters
        self.ttl_ms = handle_ttl_ms
        self.shown: dict[bytes, tuple[int, HandleInfo]] = {}

    def step(self, now_ms: int) -> list[tuple[str, HandleInfo]]:
        snap = self.service.snapshot(self.client, self.stype, self.region, self.filters, now_ms)
        events: list[tuple[str, HandleInfo]] = []
        for p, (cell, info) in list(self.shown.items()):
            if p not in snap or snap[p][0] != cell:
                events.append((self.LEAVE, info))
                del self.shown[p]
        for p, (cell, label) in snap.items():
            if p not in self.shown:
                info = self.service.mint_for(self.client, p, cell, label, self.stype, now_ms, self.ttl_ms)
                self.shown[p] = (cell, info)
                events.append((self.APPEAR, info))
        self.service.rng.shuffle(events)
        return events
