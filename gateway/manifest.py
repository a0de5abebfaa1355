"""A device's service manifest: what it offers, which methods are cacheable or mutating.

The device writes it at ``edgistry device init`` and hands it over at pairing
(JSON). Accepted shape (methods may also be plain names: read-only, not cached)::

    {"services": [{"type": "sensor",
                   "methods": [{"name": "read", "cache_max_age_s": 5, "mutating": false},
                               "info"]}],
     "duty_cycle_s": 10}

The gateway uses it to refuse unknown methods before waking anyone, to make
least-privilege application tokens (read-only methods only), to decide what
it may answer from cache, and to describe the device on chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..abci_app.txs import MAX_DUTY_CYCLE_S, MAX_METHODS, MAX_SERVICES, NAME_RE
from .errors import BadRequest
from ..proto import registry_pb2 as pb

MAX_MANIFEST_BYTES = 16 * 1024  # a few services of a few methods; bounds what pairing parses


@dataclass(frozen=True)
class Method:
    name: str
    cache_max_age_s: int = 0
    mutating: bool = False


@dataclass(frozen=True)
class Manifest:
    services: dict[str, tuple[Method, ...]]
    duty_cycle_s: int = 0

    @classmethod
    def parse(cls, raw: bytes | str | dict) -> Manifest:
        """Parse and check a manifest; raise BadRequest with the reason."""
        if isinstance(raw, (bytes, str)):
            if len(raw) > MAX_MANIFEST_BYTES:
                raise BadRequest(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
            try:
                raw = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"manifest is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("services"), list):
            raise BadRequest("manifest needs a 'services' list")
        services: dict[str, tuple[Method, ...]] = {}
        for svc in raw["services"]:
            kind = svc.get("type") if isinstance(svc, dict) else None
            if not isinstance(kind, str) or not NAME_RE.match(kind) or kind in services:
                raise BadRequest(f"manifest: bad or repeated service type {kind!r}")
            methods = tuple(_method(m) for m in svc.get("methods") or ())
            names = [m.name for m in methods]
            if not 0 < len(names) <= MAX_METHODS or len(set(names)) != len(names):
                raise BadRequest(f"manifest: service {kind} needs 1..{MAX_METHODS} distinct methods")
            services[kind] = methods
        if not 0 < len(services) <= MAX_SERVICES:
            raise BadRequest(f"manifest: a device offers 1..{MAX_SERVICES} services")
        duty = raw.get("duty_cycle_s", 0)
        if not isinstance(duty, int) or not 0 <= duty <= MAX_DUTY_CYCLE_S:
            raise BadRequest("manifest: bad duty_cycle_s")
        return cls(services, duty)

    def to_json(self) -> dict:
        return {"services": [{"type": t, "methods": [m.__dict__ for m in ms]} for t, ms in self.services.items()],
                "duty_cycle_s": self.duty_cycle_s}

    def method(self, service: str, method: str) -> Method | None:
        for m in self.services.get(service, ()):
            if m.name == method:
                return m
        return None

    def resolve(self, service: str, method: str) -> tuple[str, Method]:
        """The (service, method) a call names; ``service`` may be empty when
        only one service of the device has that method."""
        if service:
            found = self.method(service, method)
            if found is None:
                raise BadRequest(f"the device has no method {service}:{method}")
            return service, found
        hits = [(t, m) for t, ms in self.services.items() for m in ms if m.name == method]
        if not hits:
            raise BadRequest(f"the device has no method {method!r}")
        if len(hits) > 1:
            raise BadRequest(f"method {method!r} exists in several services; name one ({', '.join(t for t, _ in hits)})")
        return hits[0]

    def read_only(self, service: str) -> list[str]:
        return [m.name for m in self.services.get(service, ()) if not m.mutating]

    def descriptors(self) -> list[pb.ServiceDescriptor]:
        """The services as the registry describes them (sorted: one canonical form)."""
        return [pb.ServiceDescriptor(type=t, methods=[
                    pb.ServiceMethod(name=m.name, cache_max_age_s=m.cache_max_age_s, mutating=m.mutating)
                    for m in sorted(ms, key=lambda m: m.name)])
                for t, ms in sorted(self.services.items())]


def _method(raw: object) -> Method:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise BadRequest(f"manifest: bad method {raw!r}")
    name = raw.get("name")
    age = raw.get("cache_max_age_s", raw.get("cacheable", 0)) or 0
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(f"manifest: bad method name {name!r}")
    if not isinstance(age, int) or age < 0:
        raise BadRequest(f"manifest: bad cache_max_age_s for {name}")
    return Method(name, int(age), bool(raw.get("mutating", False)))
