"""Regions as sets of H3 cells, and the integer cell arithmetic discovery needs (pure).

A query region is a centre and a radius, or a list of cells. Either way it
becomes a :class:`Region`: a set of H3 cells (any resolutions). A disclosed
cell *intersects* a region when it lies inside one of the region's cells or
contains one of them.

Cell keys. The low 52 bits of an H3 index (base cell and fifteen digits, digits
past the resolution set to 7) identify a cell across all resolutions, and every
descendant of a cell has a key in ``[key & ~mask, key]`` (the cell itself is the
largest key of its subtree, since a digit inside the resolution is never 7).
So one sorted list of keys answers "which cells lie inside C" with two
bisections, at any resolution: see :func:`subtree_range`.

Disk covers use ``h3.grid_disk`` (correct across the antimeridian and beside
the twelve pentagons) and keep every cell whose centre is within the radius
plus a generous cell radius: a superset of the disk, decided by the query's
own parameters only, never by any registry data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import h3
from ...firmware.caplets import cap_h3
from h3.api import basic_int as h3i

MAX_RES = 15
KEY_MASK = (1 << 52) - 1
MAX_COVER_CELLS = 200  # cells per disk cover: picks the cover resolution
MAX_REGION_CELLS = 2000  # explicit cell lists beyond this are refused (work bound)
EARTH_RADIUS_KM = 6371.0088


class RegionError(ValueError):
    """The region is malformed (bad cell, bad coordinates, too many cells)."""


def resolution(cell: int) -> int:
    return (cell >> 52) & 0xF


def parent(cell: int, res: int) -> int:
    """The ancestor of ``cell`` at resolution ``res`` (<= the cell's own)."""
    return cap_h3.parent(cell, res)


def key(cell: int) -> int:
    """The cell's position in subtree order (unique across resolutions)."""
    return cell & KEY_MASK


def subtree_range(cell: int) -> tuple[int, int]:
    """Inclusive key bounds of ``cell`` and all its descendants."""
    k = cell & KEY_MASK
    low_bits = 3 * (MAX_RES - resolution(cell))
    return k & ~((1 << low_bits) - 1), k


def ancestors(cell: int) -> list[int]:
    """The cell and its ancestors, finest first (resolution r down to 0)."""
    return [parent(cell, r) for r in range(resolution(cell), -1, -1)]


def children(cell: int) -> list[int]:
    """The (up to 7) children of ``cell`` at the next resolution (valid cells only)."""
    res = resolution(cell)
    if res >= MAX_RES:
        return []
    shift = 3 * (MAX_RES - res - 1)
    base = (cell & ~(0xF << 52)) | ((res + 1) << 52)
    out = []
    for digit in range(7):
        child = base & ~(7 << shift) | (digit << shift)
        if cap_h3.is_valid_cell(child):
            out.append(child)
    return out


def intersects(a: int, b: int) -> bool:
    """True when one of the two cells contains the other."""
    ra, rb = resolution(a), resolution(b)
    return parent(a, rb) == b if ra >= rb else parent(b, ra) == a


def to_cell(value: int | str) -> int:
    """An H3 cell from an int or a hex string; raises RegionError if invalid."""
    try:
        cell = int(value, 16) if isinstance(value, str) else int(value)
    except ValueError as exc:
        raise RegionError(f"not an H3 cell: {value!r}") from exc
    if not cap_h3.is_valid_cell(cell):
        raise RegionError(f"not a valid H3 cell: {value!r}")
    return cell


@dataclass(frozen=True)
class Region:
    """A query region: H3 cells of any resolutions (possibly overlapping)."""

    cells: frozenset[int]

    @classmethod
    def of_cells(cls, cells: Iterable[int | str]) -> Region:
        given = {to_cell(c) for c in cells}
        if not given:
            raise RegionError("a region needs at least one cell")
        if len(given) > MAX_REGION_CELLS:
            raise RegionError(f"a region has at most {MAX_REGION_CELLS} cells")
        # drop cells inside other cells of the region: no device is counted twice
        out = frozenset(c for c in given
                        if not any(parent(c, r) in given for r in range(resolution(c))))
        return cls(out)

    @classmethod
    def disk(cls, lat: float, lon: float, radius_km: float) -> Region:
        """The compacted cover of a disk (whole sets of siblings become their parent)."""
        return cls(frozenset(h3i.compact_cells(list(disk_cover(lat, lon, radius_km)))))

    def restrict(self, cell: int) -> Region:
        """The part of this region inside ``cell`` (a token's region capability)."""
        rc = resolution(cell)
        out = set()
        for c in self.cells:
            if resolution(c) >= rc:
                if parent(c, rc) == cell:
                    out.add(c)
            elif parent(cell, resolution(c)) == c:
                out.add(cell)
        return Region(frozenset(out))


def cover_resolution(radius_km: float, budget: int = MAX_COVER_CELLS) -> int:
    """The finest resolution whose cells cover a disk of this radius in at most ~budget cells."""
    area = math.pi * max(radius_km, 0.001) ** 2
    for res in range(MAX_RES, -1, -1):
        if area / h3.average_hexagon_area(res, "km^2") <= budget / 3:
            return res
    return 0


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def disk_cover(lat: float, lon: float, radius_km: float, res: int | None = None) -> set[int]:
    """H3 cells (one resolution) covering the disk: a superset, from the query alone."""
    if not (-90.0 <= lat <= 90.0) or not math.isfinite(lon):
        raise RegionError(f"bad coordinates {lat},{lon}")
    if not (0 < radius_km <= 2500):
        raise RegionError("radius must be in (0, 2500] km")
    lon = (lon + 180.0) % 360.0 - 180.0
    res = cover_resolution(radius_km) if res is None else res
    edge = h3.average_hexagon_edge_length(res, "km")
    centre = h3i.latlng_to_cell(lat, lon, res)
    # H3 cells vary ~2x in size: a generous ring count and margin keep a superset.
    rings = math.ceil(radius_km / (1.5 * edge * 0.9)) + 1
    limit = radius_km + 2.0 * edge
    # rings this close are inside the disk whatever the distortion: no distance check needed
    inner = int(radius_km / (2.0 * math.sqrt(3) * edge))
    out = set(h3i.grid_disk(centre, min(inner, rings)))
    if radius_km <= 200 and abs(lat) <= 80:
        # equirectangular distance (under 1% error at this scale), with 5% to spare
        kx = math.radians(1.0) * EARTH_RADIUS_KM * math.cos(math.radians(lat))
        ky = math.radians(1.0) * EARTH_RADIUS_KM
        lim2 = (limit * 1.05) ** 2
        to_ll = h3i.cell_to_latlng
        for c in h3i.grid_disk(centre, rings):
            if c not in out:
                clat, clon = to_ll(c)
                dlon = (clon - lon + 180.0) % 360.0 - 180.0
                if (dlon * kx) ** 2 + ((clat - lat) * ky) ** 2 <= lim2:
                    out.add(c)
        return out
    for c in h3i.grid_disk(centre, rings):
        if c not in out:
            clat, clon = h3i.cell_to_latlng(c)
            if _haversine_km(lat, lon, clat, clon) <= limit:
                out.add(c)
    return out
