"""Shared helpers for discovery tests: synthetic devices, a service, clients."""

from __future__ import annotations

import os
import random

import h3
from edgistry.gateway.tokens.app_tokens import AppClient, authenticate, mint_app_token
from edgistry.gateway.discovery.core import DiscoveryService
from edgistry.gateway.discovery.handles import HandleCodec, derive_key
from edgistry.gateway.discovery.index import DeviceEntry, RegistryIndex, ServiceInfo

GW = "a" * 32
GW2 = "b" * 32
NOW_MS = 1_900_000_000_000
SENSOR = (ServiceInfo("sensor", frozenset({"read", "set"}), frozenset({"set"})),)


def cell_at(lat: float, lon: float, res: int) -> int:
    return h3.str_to_int(h3.latlng_to_cell(lat, lon, res))


def entry(rng: random.Random, lat: float, lon: float, res: int = 7, k: int = 3, duty: int = 60,
          last_seen: int = NOW_MS // 1000 - 60, gateway: str = GW, services=SENSOR) -> DeviceEntry:
    return DeviceEntry(rng.randbytes(16), gateway, services, cell_at(lat, lon, res), k, duty, last_seen)


def population(rng: random.Random, n: int, box=(48.0, 48.4, 2.0, 2.6), res_choices=(6, 7, 8),
               k_choices=(1, 2, 3, 5, 8)) -> list[DeviceEntry]:
    """``n`` devices in a lat/lon box with mixed policies (resolution, k, duty cycle)."""
    lat0, lat1, lon0, lon1 = box
    return [entry(rng, rng.uniform(lat0, lat1), rng.uniform(lon0, lon1), rng.choice(res_choices),
                  rng.choice(k_choices), rng.choice((0, 30, 600, 7200))) for _ in range(n)]


class World:
    """An index, a gateway secret and the discovery service over it."""

    def __init__(self, entries: list[DeviceEntry] = (), gateway_id: str = GW, secret: bytes | None = None,
                 seed: int = 7) -> None:
        self.secret = secret or os.urandom(32)
        self.index = RegistryIndex()
        self.index.load(entries)
        self.index.gateways = {GW: "127.0.0.1:26670", GW2: "127.0.0.1:26680"}
        self.service = DiscoveryService(self.index, HandleCodec(derive_key(self.secret), gateway_id), gateway_id,
                                        "127.0.0.1:26670", rng=random.Random(seed))

    def client(self, name: str = "app", region: int | None = None) -> AppClient:
        return authenticate(mint_app_token(self.secret, name, region), self.secret)

    def all_pages(self, client: AppClient, region, filters=None, page_size: int = 50, stype: str = "sensor"):
        from edgistry.gateway.discovery.core import Filters

        out, cursor = [], ""
        while True:
            ans = self.service.discover(client, stype, region, filters or Filters(), page_size, cursor, NOW_MS)
            out.extend(ans.handles)
            if not ans.next_page:
                return out
            cursor = ans.next_page

    def truth(self, client: AppClient, handles) -> list[bytes]:
        """The pseudonyms behind handles (the test's oracle; a client cannot do this)."""
        return [self.service.resolve(client, h.handle, NOW_MS).pseudonym for h in handles]
