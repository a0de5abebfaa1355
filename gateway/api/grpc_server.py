"""The gRPC front ends: Gateway and Commissioning for clients, Peer for other gateways (grpc.aio).

Handlers only convert messages and call the domain objects; every domain
error becomes a status through :func:`_abort`, the single mapping point
(errors.grpc_code). Reflection and the standard health service are on.

Two servers, two ports. The client port speaks TLS with the gateway's
certificate and asks no client certificate. The peer port speaks mutual TLS:
grpcio's Python API can either require (and verify) a client certificate or
never ask for one, so a port that serves certificate-less clients can never see
a peer's certificate. Every server binds its port exclusively
(``grpc.so_reuseport`` 0): a second gateway on a taken port fails to start
instead of sharing the port with the first.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..pairing.commissioner import Commissioner
from ..admission import Admission
from ..errors import BadRequest, GatewayError, grpc_code, retry_after_ms
from ..metrics import GatewayMetrics
from .admission_grpc import RETRY_AFTER_KEY, AdmissionInterceptor, server_options
from .peer import ForwardChecker, presented_cert
from .convert import result_fields, to_call, to_pb
from .service import GatewayService, Result
from ...proto import gateway_pb2 as gw
from ...proto import gateway_pb2_grpc as gw_grpc

log = logging.getLogger(__name__)
GRACE_S = 5.0  # in-flight calls get this long at shutdown
# gRPC sets SO_REUSEPORT by default: a second server on the same port would start and
# share it, and clients would reach either at random
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)


def _item(res: Result | GatewayError) -> dict:
    """A ``gw.BatchItem``'s fields (SubmitBatchResponse builds the items from them)."""
    if isinstance(res, GatewayError):
        wait = retry_after_ms(res)
        hint = f" (retry after {wait} ms)" if wait is not None and "retry" not in str(res) else ""
        return {"code": grpc_code(res).value[0], "error": str(res) + hint}
    return {"result": result_fields(res)}


async def _abort(context: grpc.aio.ServicerContext, err: GatewayError) -> None:
    hold = getattr(err, "hold", None)
    if hold is not None:  # a rate refusal answered late (admission.py: held refusals)
        await hold()
    wait = retry_after_ms(err)
    trailer = ((RETRY_AFTER_KEY, str(wait)),) if wait is not None else ()
    await context.abort(grpc_code(err), str(err), trailing_metadata=trailer)


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

    async def _checked(self, request: gw.Forwarded, context: grpc.aio.ServicerContext) -> None:
        try:
            await self.checker.check(request, peer_cert=presented_cert(context.auth_context()))
        except GatewayError:
            self.metrics.forwards.labels("in", "refused").inc()
            raise
        self.metrics.forwards.labels("in", "accepted").inc()

    async def Forward(self, request, context):
        try:
            await self._checked(request, context)
            if request.call in ("invoke", "submit"):
                res = await self.service.serve_forward(request.call, to_call(request.request, from_peer=True),
                                                       via=request.from_id)
            else:
                res = await self.service.serve_forward(request.call, request_id=request.result.request_id,
                                                       token=request.result.token, via=request.from_id,
                                                       revocation_height=request.result.revocation_height)
            return to_pb(res)
        except GatewayError as err:
            await _abort(context, err)

    async def ForwardWatch(self, request, context):
        try:
            await self._checked(request, context)
            if request.call != "watch":
                raise BadRequest("ForwardWatch carries a watch call")
            async for res in self.service.serve_forward_watch(request.result.request_id, request.result.token,
                                                             request.result.revocation_height):
                yield to_pb(res)
        except GatewayError as err:
            await _abort(context, err)


async def start_grpc(listen: str, service: GatewayService, commissioner: Commissioner | None,
                     checker: ForwardChecker | None, metrics: GatewayMetrics,
                     extra: Iterable[Callable[[grpc.aio.Server], str]] = (),
                     admission: Admission | None = None,
                     credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    """Create, bind and start the client server; returns it and the bound port.

    ``extra``: functions that add another service (discovery) to the server and
    return its full name; the assembly passes them, so this module depends on
    no other front end. ``admission``: the gateway's admission control (the
    core's caps and the interceptor, admission_grpc.py); None: no limits.
    ``credentials``: TLS (gateway/tls.py); None serves plaintext. ``checker``
    is for tests that forward on one port; the gateway serves Peer on its own
    port (:func:`start_peer_grpc`)."""
    if admission is not None:
        kw = server_options(admission.limits)
        kw["options"] = list(SERVER_OPTIONS) + kw["options"]
        server = grpc.aio.server(interceptors=[AdmissionInterceptor(admission)], **kw)
    else:
        server = grpc.aio.server(options=SERVER_OPTIONS)
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
    return server, await _serve(server, names, listen, credentials, "gRPC")


async def start_peer_grpc(listen: str, service: GatewayService, checker: ForwardChecker, metrics: GatewayMetrics,
                          credentials: grpc.ServerCredentials | None) -> tuple[grpc.aio.Server, int]:
    """Create, bind and start the peer server (Peer and health only): mutual TLS with
    ``credentials`` (peer.PeerRoots), or plaintext when None (``--insecure``)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    gw_grpc.add_PeerServicer_to_server(PeerServicer(service, checker, metrics), server)
    names = [gw.DESCRIPTOR.services_by_name["Peer"].full_name]
    return server, await _serve(server, names, listen, credentials, "gateway-to-gateway gRPC")


async def _serve(server: grpc.aio.Server, names: list[str], listen: str,
                 credentials: grpc.ServerCredentials | None, what: str) -> int:
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_secure_port(listen, credentials) if credentials is not None \
            else server.add_insecure_port(listen)
    except RuntimeError as exc:  # grpc's way of saying it could not bind
        raise bind_error(listen, what) from exc
    await server.start()
    for name in names + [""]:
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    return port


def bind_error(listen: str, what: str) -> OSError:
    """Why gRPC could not bind ``listen``: gRPC only says "failed", so bind a plain socket
    there to learn the reason (address in use, not available, no permission)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    reason: OSError = OSError(errno.EADDRINUSE, "address already in use")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
        reason = OSError(errno.EINVAL, "gRPC could not bind it")
    except OSError as exc:
        reason = exc
    except ValueError:
        reason = OSError(errno.EINVAL, "not HOST:PORT")
    return OSError(reason.errno, f"cannot listen on {listen} for {what}: {(reason.strerror or str(reason)).lower()}")
