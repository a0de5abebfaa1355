"""The status page's map: H3 cells with device counts, exactly as discovery groups them (pure).

The map never computes a grouping of its own. It reads the groups of the
discovery index (gateway/discovery/index.py, :class:`TypeIndex`): per service
type, the cells where at least k devices of that type are disclosed together
(k of every member), coarsened as discovery coarsens them. So a cell with
fewer than k devices is never drawn, because discovery would never disclose
it; devices in no group are counted only as "withheld", per type, with no
place. Counts are per service type (a layer each): summing types per cell
would tell how groups overlap, which discovery never tells.

Boundaries come from ``h3.cell_to_boundary`` here, on the server (the page
needs no H3 code and no network): (lat, lon) vertices in degrees, the page
projects them.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3

from ..discovery.index import RegistryIndex

MAX_CELLS_PER_TYPE = 2000  # a page draws at most this many hexagons per layer (the largest groups first)


@dataclass(frozen=True)
class Cell:
    """One drawn cell of one layer."""

    cell: int
    count: int
    boundary: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        return {"cell": f"{self.cell:x}", "res": h3.get_resolution(h3.int_to_str(self.cell)), "count": self.count,
                "boundary": [[round(lat, 6), round(lon, 6)] for lat, lon in self.boundary]}


_BOUNDARIES: dict[int, tuple[tuple[float, float], ...]] = {}


def boundary(cell: int) -> tuple[tuple[float, float], ...]:
    """The cell's vertices (lat, lon) in degrees (remembered: cells do not move)."""
    out = _BOUNDARIES.get(cell)
    if out is None:
        if len(_BOUNDARIES) > 50_000:
            _BOUNDARIES.clear()
        out = _BOUNDARIES[cell] = tuple(h3.cell_to_boundary(h3.int_to_str(cell)))
    return out


def layers(index: RegistryIndex) -> dict[str, dict]:
    """Per service type: its drawn cells (discovery's groups, each at least its members' k)
    and how many of its devices are withheld (in no group)."""
    out = {}
    for stype in sorted(index.types):
        ti = index.types[stype]
        groups = sorted(ti.groups.values(), key=lambda g: (-len(g), g.cell))[:MAX_CELLS_PER_TYPE]
        cells = [Cell(g.cell, len(g), boundary(g.cell)) for g in groups if len(g) >= max(g.max_k, 1)]
        out[stype] = {"cells": [c.to_dict() for c in cells], "withheld": sum(ti.withheld.values()),
                      "disclosed": sum(c.count for c in cells)}
    return out
