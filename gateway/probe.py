"""Probes: how benchmarks and operators time the gateway's stages without patching it.

A :class:`Probe` is handed to the parts that accept one (``GatewayService``,
``LinkServer``, :class:`~edgistry.gateway.link.backend.TimedBackend`); each
reports the seconds a named stage took. With no probe (the default) a part
pays one ``is None`` test per stage. The names are the constants below, so a
reader of a profile can find the code that reported it.
"""

from __future__ import annotations

from typing import Protocol

SUBMIT_AUTHORISE = "submit.authorise"  # verifying the client token for one call
SUBMIT_TOTAL = "submit.total"  # one item from arrival to its durable acknowledgement
LINK_CONNECTION = "link.connection"  # one device connection, accept to close
LINK_ESTABLISHED_TO_REQUESTS = "link.established_to_requests"  # device flight read -> REQUESTS written (handshake)
LINK_BACKEND = "link."  # prefix: one LinkBackend call (link.pending, link.await.answered, ...)


class Probe(Protocol):
    def span(self, name: str, seconds: float, sample: bool = False) -> None:
        """Record that stage ``name`` took ``seconds``; ``sample``: keep it for percentiles."""
