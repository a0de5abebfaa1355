"""What the status page shows, gathered from the running gateway's parts (reads only).

:class:`StatusSource` holds the parts it reads (the store, the link server,
the discovery index, the chain client) and answers :meth:`StatusSource.snapshot`:
chain height and peers, this gateway's paired devices by pseudonym (services,
queue depth, last contact, session open), queue totals, link sessions, recent
warnings and errors, and the map (hexmap.py: discovery's own groups). The
chain's status is asked at most every ``chain_every_s`` (several open pages
cost one RPC call). :class:`RecentErrors` is a logging handler keeping the
last warnings and errors of the ``edgistry`` loggers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from ...chain import ChainClient, ChainError
from . import hexmap

MAX_DEVICES = 1000  # devices listed (the busiest first); the total is always given
MAX_ERRORS = 50
CHAIN_TIMEOUT_S = 2.0


class RecentErrors(logging.Handler):
    """The last ``size`` records at WARNING or above: time, level, logger, message (one line)."""

    def __init__(self, size: int = MAX_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            message = str(record.msg)
        self.records.append({"at_ms": int(record.created * 1000), "level": record.levelname,
                             "logger": record.name, "message": " ".join(message.split())[:300]})

    def attach(self, logger: str = "edgistry") -> RecentErrors:
        logging.getLogger(logger).addHandler(self)
        return self

    def detach(self, logger: str = "edgistry") -> None:
        logging.getLogger(logger).removeHandler(self)


class StatusSource:
    """Reads for the status page (see the module docstring)."""

    def __init__(self, gateway: Any, errors: RecentErrors, chain_every_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.gw, self.errors, self.chain_every_s, self.clock = gateway, errors, chain_every_s, clock
        self._chain: dict = {}
        self._chain_at = 0.0
        self._lock = asyncio.Lock()
        self.started = clock()

    async def chain(self) -> dict:
        """Height, chain id and peers of the node (cached for ``chain_every_s``)."""
        async with self._lock:
            if self.clock() - self._chain_at >= self.chain_every_s:
                self._chain = await self._read_chain()
                self._chain_at = self.clock()
        return self._chain

    async def _read_chain(self) -> dict:
        client: ChainClient = self.gw.chain
        out: dict[str, Any] = {"rpc": client.url}
        try:
            status = await asyncio.wait_for(client.status(), CHAIN_TIMEOUT_S)
            out.update(height=int(status["sync_info"]["latest_block_height"]),
                       chain_id=status["node_info"]["network"], node=status["node_info"].get("moniker", ""),
                       catching_up=bool(status["sync_info"].get("catching_up")), reachable=True)
        except (ChainError, asyncio.TimeoutError, KeyError, ValueError) as exc:
            out.update(reachable=False, error=str(exc)[:200])
            return out
        try:
            info = await asyncio.wait_for(client.call("net_info"), CHAIN_TIMEOUT_S)
            out["peers"] = sorted(p["node_info"].get("moniker", "?") for p in info.get("peers", []))
        except (ChainError, asyncio.TimeoutError, KeyError, TypeError):
            out["peers"] = None  # the embedded node has no peers and no net_info
        return out

    def devices(self) -> dict:
        """This gateway's paired devices (by pseudonym), busiest queues first."""
        store, link = self.gw.store, self.gw.link
        if store is None:
            return {"total": 0, "list": []}
        depths = store.depths()
        awake = set(link.connected()) if link is not None else set()
        rows = []
        for dev in store.devices():
            contact = store.last_contact(dev.link_id)
            twin = store.twin(dev.link_id)
            rows.append({
                "pseudonym": dev.pseudonym.hex(), "services": sorted(dev.parsed_manifest.services),
                "duty_cycle_s": dev.duty_cycle_s, "queue": depths.get(dev.link_id, 0),
                "session": dev.link_id in awake, "last_seen_ms": contact.last_ms if contact else 0,
                "sleep_s": contact.sleep_s if contact else None, "paired_at_ms": dev.paired_at_ms,
                "twin_pending": (sum(1 for e in twin.desired.values() if e and e[-1][1] > twin.applied)
                                 if twin is not None else 0)})
        rows.sort(key=lambda r: (-r["queue"], -r["last_seen_ms"], r["pseudonym"]))
        return {"total": len(rows), "list": rows[:MAX_DEVICES]}

    def link(self) -> dict:
        link = self.gw.link
        if link is None:
            return {}
        snap = link.metrics.snapshot()
        snap["sessions_open"] = len(link.connected())
        return snap

    def map(self) -> dict:
        discovery = getattr(self.gw, "discovery", None)
        if discovery is None:
            return {"height": 0, "layers": {}}
        index = discovery.index
        return {"height": index.height, "devices": len(index), "layers": hexmap.layers(index),
                "gateways": len(index.gateways)}

    async def snapshot(self) -> dict:
        """Everything the page shows, as JSON-ready data."""
        devices = self.devices()
        depths = list(self.gw.store.depths().values()) if self.gw.store is not None else []
        discovery = getattr(self.gw, "discovery", None)
        peers = sorted(discovery.index.gateways.items()) if discovery is not None else []
        return {
            "gateway": {"id": self.gw.gateway_id, "grpc": self.gw.grpc_endpoint, "link": self.gw.link_endpoint,
                        "up_s": int(self.clock() - self.started)},
            "chain": await self.chain(),
            "peer_gateways": [{"id": gid, "endpoint": ep} for gid, ep in peers if gid != self.gw.gateway_id],
            "devices": devices,
            "queues": {"total": sum(depths), "max": max(depths, default=0),
                       "devices_with_work": sum(1 for d in depths if d)},
            "link": self.link(),
            "errors": list(reversed(self.errors.records)),
            "map": self.map(),
        }
