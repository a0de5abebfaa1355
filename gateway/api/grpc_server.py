"""The gRPC front end: Gateway, Commissioning and Peer services (grpc.aio).

Handlers only convert messages and call the domain objects; every domain
error becomes a status through :func:`_abort`, the single mapping point
(errors.grpc_code). Reflection and the standard health service are on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..pairing.commissioner import Commissioner
from ..errors import BadRequest, GatewayError, grpc_code
from ..metrics import GatewayMetrics
from .peer import ForwardChecker
from .convert import to_call, to_pb
from .service import GatewayService, Result
from ...proto import gateway_pb2 as gw
from ...proto import gateway_pb2_grpc as gw_grpc

log = logging.getLogger(__name__)
GRACE_S = 5.0  # in-flight calls get this long at shutdown


def _item(res: Result | GatewayError) -> gw.BatchItem:
    if isinstance(res, GatewayError):
        return gw.BatchItem(code=grpc_code(res).value[0], error=str(res))
    return gw.BatchItem(result=to_pb(res))


async def _abort(context: grpc.aio.ServicerContext, err: GatewayError) -> None:
    await context.abort(grpc_code(err), str(err))


class GatewayServicer(gw_grpc.GatewayServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def Status(self, request, context):
        return gw.GatewayStatus(**self.service.status())

    async def Invoke(self, request, context):
        try:
            return to_pb(await self.service.invoke(to_call(request)))
        except GatewayError as err:
            await _abort(context, err)

    async def Submit(self, request, context):
        try:
            return to_pb(await self.service.submit(to_call(request)))
        except GatewayError as err:
            await _abort(context, err)

    async def SubmitBatch(self, request, context):
        try:
            results = await self.service.submit_many([to_call(r) for r in request.requests])
        except GatewayError as err:
            await _abort(context, err)
            return
        return gw.SubmitBatchResponse(items=[_item(r) for r in results])

    async def GetResult(self, request, context):
        try:
            return to_pb(await self.service.get_result(request.request_id, request.token))
        except GatewayError as err:
            await _abort(context, err)

    async def Cancel(self, request, context):
        try:
            return to_pb(await self.service.cancel(request.request_id, request.token))
        except GatewayError as err:
            await _abort(context, err)

    async def WatchResult(self, request, context) -> AsyncIterator[gw.Result]:
        try:
            async for res in self.service.watch(request.request_id, request.token):
                yield to_pb(res)
        except GatewayError as err:
            await _abort(context, err)


class CommissioningServicer(gw_grpc.CommissioningServicer):
    def __init__(self, commissioner: Commissioner) -> None:
        self.commissioner = commissioner

    async def Begin(self, request, context):
        try:
            return self.commissioner.begin(request)
        except GatewayError as err:
            await _abort(context, err)

    async def Complete(self, request, context):
        try:
            return await self.commissioner.complete(request)
        except GatewayError as err:
            await _abort(context, err)


class PeerServicer(gw_grpc.PeerServicer):
    def __init__(self, service: GatewayService, checker: ForwardChecker, metrics: GatewayMetrics) -> None:
        self.service, self.checker, self.metrics = service, checker, metrics

    async def _checked(self, request: gw.Forwarded) -> None:
        try:
            await self.checker.check(request)
        except GatewayError:
            self.metrics.forwards.labels("in", "refused").inc()
            raise
        self.metrics.forwards.labels("in", "accepted").inc()

    async def Forward(self, request, context):
        try:
            await self._checked(request)
            if request.call in ("invoke", "submit"):
                res = await self.service.serve_forward(request.call, to_call(request.request, from_peer=True),
                                                       via=request.from_id)
            else:
                res = await self.service.serve_forward(request.call, request_id=request.result.request_id,
                                                       token=request.result.token, via=request.from_id)
            return to_pb(res)
        except GatewayError as err:
            await _abort(context, err)

    async def ForwardWatch(self, request, context):
        try:
            await self._checked(request)
            if request.call != "watch":
                raise BadRequest("ForwardWatch carries a watch call")
            async for res in self.service.watch(request.result.request_id, request.result.token):
                yield to_pb(res)
        except GatewayError as err:
            await _abort(context, err)


async def start_grpc(listen: str, service: GatewayService, commissioner: Commissioner | None,
                     checker: ForwardChecker | None, metrics: GatewayMetrics,
                     extra: Iterable[Callable[[grpc.aio.Server], str]] = ()) -> tuple[grpc.aio.Server, int]:
    """Create, bind and start the server; returns it and the bound port.

    ``extra``: functions that add another service (discovery) to the server and
    return its full name; the assembly passes them, so this module depends on
    no other front end."""
    server = grpc.aio.server()
    gw_grpc.add_GatewayServicer_to_server(GatewayServicer(service), server)
    names = [gw.DESCRIPTOR.services_by_name["Gateway"].full_name]
    for add in extra:
        names.append(add(server))
    if commissioner is not None:
        gw_grpc.add_CommissioningServicer_to_server(CommissioningServicer(commissioner), server)
        names.append(gw.DESCRIPTOR.services_by_name["Commissioning"].full_name)
    if checker is not None:
        gw_grpc.add_PeerServicer_to_server(PeerServicer(service, checker, metrics), server)
        names.append(gw.DESCRIPTOR.services_by_name["Peer"].full_name)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:  # grpc's way of saying "address in use"
        raise OSError(f"cannot listen on {listen} for gRPC: {exc}") from exc
    await server.start()
    for name in names + [""]:
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
