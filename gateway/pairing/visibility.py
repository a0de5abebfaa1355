"""Is a freshly paired device visible to discovery? Read from the registry, decided by
discovery's own grouping rule (discovery/index.py), so the answer is the one a query gets.

A device is disclosed only inside a group of at least ``k`` devices of its type
(each member's k): with the default k=5, a lone test device is hidden, which is
right but surprising. ``edgistry pair`` reports it and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3

from ...chain import ChainClient
from ..discovery.index import RegistryIndex, entry_from_record
from ...proto import registry_pb2 as pb


@dataclass(frozen=True)
class TypeVisibility:
    """One service type of the device: where (if anywhere) discovery discloses it."""

    service_type: str
    cell: int  # the device's policy cell (the coarse cell on chain)
    resolution: int
    k: int
    sharing: int  # devices of this type whose policy cell is the device's (itself included)
    disclosed_cell: int | None  # None: hidden

    def to_dict(self) -> dict:
        return {"service_type": self.service_type, "cell": f"{self.cell:x}", "resolution": self.resolution,
                "k": self.k, "devices_in_cell": self.sharing, "visible": self.disclosed_cell is not None,
                "disclosed_cell": None if self.disclosed_cell is None else f"{self.disclosed_cell:x}"}

    def advice(self) -> str:
        """One line for a person."""
        if self.disclosed_cell is not None:
            return (f"{self.service_type}: discoverable (in cell {self.disclosed_cell:x}, a group of at least "
                    f"k={self.k} devices of its type)")
        return (f"{self.service_type}: hidden from discovery for now: {self.sharing} device(s) of this type in its "
                f"cell {self.cell:x}, and it asks for k={self.k}; discovery shows it once at least {self.k} devices of "
                "its type share a cell around it (pair more nearby, or pair again with a smaller --k or a coarser "
                "--resolution)")


def summarise(record: pb.DeviceRecord, neighbours: dict[str, list[pb.DeviceRecord]]) -> list[TypeVisibility]:
    """Pure: the device's visibility per type, given every device of each type under its
    resolution-0 cell (discovery never groups across those)."""
    out = []
    for svc in record.services:
        index = RegistryIndex()
        index.load(entry_from_record(r) for r in neighbours.get(svc.type, []))
        sharing = sum(1 for r in neighbours.get(svc.type, []) if r.cell == record.cell)
        out.append(TypeVisibility(svc.type, record.cell, record.policy.resolution, record.policy.k, sharing,
                                  index.disclosure_cell(svc.type, record.pseudonym)))
    return out


async def check(rpc_url: str, pseudonym: bytes) -> list[TypeVisibility]:
    """Ask the registry at ``rpc_url`` (raises ChainError when it cannot be read)."""
    async with ChainClient(rpc_url) as chain:
        res = await chain.query("/device", pb.DeviceQuery(pseudonym=pseudonym).SerializeToString())
        if res.code != 0:
            return []
        record = pb.DeviceRecord.FromString(res.value)
        base = h3.str_to_int(h3.cell_to_parent(h3.int_to_str(record.cell), 0))
        neighbours = {svc.type: await chain.devices("/devices/by_cell",
                                                    pb.DeviceQuery(service_type=svc.type, cell=base))
                      for svc in record.services}
    return summarise(record, neighbours)
