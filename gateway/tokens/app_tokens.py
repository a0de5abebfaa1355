"""Application tokens: the gateway is their origin (keys/gateway.secret).

An application token is one CAPLets frame minted with the gateway's secret:

* ``Identity(NAME)``: who the client is (handles are bound to it);
* ``Resource("/svc", READ)``: read-only use of every service (non-mutating methods);
* ``Service(TYPE, methods)`` for each ``--service``: explicit grants;
* ``Region(CELL)`` (optional): discovery is limited to that cell;
* ``ExpiresAt`` (optional).

A client may derive narrower tokens from it (CAPLets only narrows). The gateway
checks them with :func:`authenticate`, which returns an :class:`AppClient`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from ...firmware.caplets.cap_caps import READ
from ...firmware.caplets.cap_entries import ExpiresAt, Identity, Region, Resource, Service
from ...firmware.caplets.cap_token import Token
from ...firmware.caplets.cap_errors import TokenError
from ...firmware.caplets.cap_verify import chain_tags
from ...firmware.caplets.mint import mint, verify
from ...firmware.caplets.cap_caps import (
    IDENTITY, REGION, RESOURCE, ROOT, SERVICE, WILDCARD, prefix_within,
)
from ..errors import Unauthorized
from ..discovery.handles import client_id_of

SERVICES_PREFIX = "/svc"


def mint_app_token(secret: bytes, name: str, region: int | None = None, expires_at: int | None = None,
                   services: Iterable[Service] = ()) -> Token:
    """A read-only application token for ``name`` (see the module docstring)."""
    entries = [Identity(name), Resource(SERVICES_PREFIX, READ), *services]
    if region is not None:
        entries.append(Region(region))
    if expires_at is not None:
        entries.append(ExpiresAt(expires_at))
    return mint(secret, entries)


@dataclass(frozen=True)
class AppClient:
    """An authenticated application: its id (for handles), name and rights."""

    client_id: bytes
    name: str
    region: int | None
    read_prefixes: tuple[str, ...]  # resource prefixes with READ
    services: tuple[tuple[str, tuple[str, ...]], ...]  # (type, methods) grants
    root: bool = False

    def may_discover(self, stype: str) -> bool:
        return self.root or any(t == stype for t, _ in self.services) or any(
            prefix_within(f"{SERVICES_PREFIX}/{stype}", p) for p in self.read_prefixes)

    def may_invoke(self, stype: str, method: str, mutating: bool) -> bool:
        if self.root:
            return True
        for t, methods in self.services:
            if t == stype and (methods[0] == WILDCARD or method in methods):
                return True
        return not mutating and any(prefix_within(f"{SERVICES_PREFIX}/{stype}", p) for p in self.read_prefixes)


def authenticate(token: bytes | str | Token, secret: bytes, now: int | None = None,
                 revoked: object = None, gateway: str | None = None) -> AppClient:
    """Verify an application token of this gateway; raises Unauthorized."""
    try:
        tok = verify(token, secret, now=int(time.time()) if now is None else now,
                     revoked=revoked, gateway=gateway)
    except (TokenError, ValueError) as exc:
        raise Unauthorized(f"application token refused: {type(exc).__name__}") from exc
    leaf = tok._recs[-1][0]
    names = [c[2] for c in leaf if c[0] == IDENTITY]
    if len(names) != 1:
        raise Unauthorized("application token must name exactly one identity")
    regions = [c[2] for c in leaf if c[0] == REGION]
    if len(regions) > 1:
        raise Unauthorized("application token may name at most one region")
    first_tag = chain_tags(secret, tok._slices[:1])[0]
    return AppClient(
        client_id=client_id_of(names[0].encode(), first_tag),
        name=names[0],
        region=regions[0] if regions else None,
        read_prefixes=tuple(c[2] for c in leaf if c[0] == RESOURCE and c[3] & READ),
        services=tuple((c[2], tuple(c[3])) for c in leaf if c[0] == SERVICE),
        root=any(c[0] == ROOT for c in leaf),
    )
