"""The Twins gRPC service (proto/twin.proto): a thin adapter over :class:`TwinService`.

Handlers convert messages, call the service and map domain errors to status
codes in one place (errors.grpc_code), as the other front ends do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ..errors import BadRequest, GatewayError, grpc_code
from . import model
from .service import TwinService, TwinView
from ...proto import twin_pb2 as tpb
from ...proto import twin_pb2_grpc as tgrpc

MAX_CHANGES = model.MAX_KEYS  # one SetDesired touches at most every key a twin may hold


def to_pb(view: TwinView) -> tpb.TwinState:
    s = view.state
    return tpb.TwinState(
        target=view.target, has_desired=view.desired, has_reported=view.reported,
        desired=[tpb.TwinProperty(key=k, value=d["value"], version=d["version"], at_ms=d["set_ms"],
                                  applied=d["applied"]) for k, d in s["desired"].items()],
        reported=[tpb.TwinProperty(key=k, value=r["value"], version=r["version"], at_ms=r["at_ms"])
                  for k, r in s["reported"].items()],
        version=s["version"], applied=s["applied"], applied_ms=s["applied_ms"], pending=s["pending"],
        reported_ms=s["reported_ms"], report_error=s["report_error"], expected_at_ms=view.expected_at_ms)


def to_changes(req: tpb.SetDesiredRequest) -> list[model.Change]:
    if len(req.changes) > MAX_CHANGES:
        raise BadRequest(f"at most {MAX_CHANGES} changes in one call")
    out = []
    for c in req.changes:
        if not c.delete and not c.value:
            raise BadRequest(f"twin key {c.key!r}: give a JSON value (or delete it)")
        out.append(model.Change(c.key, None if c.delete else c.value,
                                c.if_version if c.HasField("if_version") else None))
    return out


class TwinServicer(tgrpc.TwinsServicer):
    def __init__(self, service: TwinService) -> None:
        self.service = service

    async def GetTwin(self, request, context):
        try:
            return to_pb(await self.service.get(request.target, request.token))
        except GatewayError as err:
            await context.abort(grpc_code(err), str(err))

    async def SetDesired(self, request, context):
        try:
            return to_pb(await self.service.set_desired(request.target, request.token, to_changes(request)))
        except GatewayError as err:
            await context.abort(grpc_code(err), str(err))

    async def WatchTwin(self, request, context) -> AsyncIterator[tpb.TwinState]:
        try:
            async for view in self.service.watch(request.target, request.token):
                yield to_pb(view)
        except GatewayError as err:
            await context.abort(grpc_code(err), str(err))


def add_to_server(server: grpc.aio.Server, service: TwinService) -> str:
    """Add the Twins service; returns its full name (for reflection and health)."""
    tgrpc.add_TwinsServicer_to_server(TwinServicer(service), server)
    return tpb.DESCRIPTOR.services_by_name["Twins"].full_name
