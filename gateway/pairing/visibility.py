"""Is a freshly paired device visible to discovery? The gateway answers in the pairing result.

A device is disclosed only inside a group of at least ``k`` devices of its type
(each member's k): with the default k=5, a lone test device is hidden, which is
right but surprising. ``edgistry pair`` reports it and says what to do.

Service types and cells are sealed on chain, so only a gateway can tell: the
commissioner reads its own discovery index (discovery/index.py, the grouping
discovery answers from) once that index has applied the registration's height.
The reply names the cell the device is disclosed at, or none; it never counts the
devices around it, since discovery tells nobody how many devices it withholds.
"""

from __future__ import annotations

from ..discovery.index import RegistryIndex
from ...proto import gateway_pb2 as gw

WAIT_S = 5.0  # how long pairing waits for the index to reach the registration (it polls every 0.25 s)


def assess(index: RegistryIndex, pseudonym: bytes) -> list[gw.PairVisibility] | None:
    """Pure: per service type of the device, its disclosure cell in ``index`` (0: hidden);
    None when the index does not hold the device (it could not open its record)."""
    entry = index.entries.get(pseudonym)
    if entry is None:
        return None
    return [gw.PairVisibility(service_type=t, disclosed_cell=index.disclosure_cell(t, pseudonym) or 0)
            for t in entry.types]


async def after_commit(replica, pseudonym: bytes, height: int, timeout: float = WAIT_S) -> list | None:
    """The device's visibility once ``replica`` (a discovery.replica.ReplicaFollower) has applied
    ``height``; None when it does not get there within ``timeout`` or cannot read the device."""
    if replica is None or not await replica.wait_height(height, timeout):
        return None
    return assess(replica.index, pseudonym)


def fill(result: gw.PairResult, visibility: list[gw.PairVisibility] | None) -> gw.PairResult:
    """Put what discovery makes of the device into a pairing result (in place; returns it)."""
    result.discovery_known = visibility is not None
    result.discovery.extend(visibility or [])
    return result


# ---- the commissioning tool's side ----

def to_dicts(result: gw.PairResult, resolution: int, k: int) -> list[dict] | None:
    """The pairing result's visibility in the CLI's JSON shape (cells in hex); None when the
    gateway could not tell."""
    if not result.discovery_known:
        return None
    return [{"service_type": v.service_type, "cell": f"{result.cell:x}", "resolution": resolution, "k": k,
             "visible": bool(v.disclosed_cell),
             "disclosed_cell": f"{v.disclosed_cell:x}" if v.disclosed_cell else None}
            for v in result.discovery]


def advice(v: dict) -> str:
    """One line for a person about one entry of :func:`to_dicts`."""
    if v["visible"]:
        return (f"{v['service_type']}: discoverable (in cell {v['disclosed_cell']}, a group of at least "
                f"k={v['k']} devices of its type)")
    return (f"{v['service_type']}: hidden from discovery for now: no group of at least k={v['k']} devices of its "
            f"type (each allowing a group that size) shares a cell around its cell {v['cell']} yet; discovery "
            f"shows it once one does (pair more nearby, or pair again with a smaller --k or a coarser --resolution)")
