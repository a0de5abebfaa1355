"""The gRPC side of admission control: server options and an interceptor (thin).

What refuses where, cheapest first:

1. the gRPC core, before any Python runs: ``maximum_concurrent_rpcs`` (calls
   beyond it get RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!", with no
   retry hint: it is the backstop) and HTTP/2 ``max_concurrent_streams`` per
   connection (a client's further calls wait on its own side, costing the
   gateway nothing);
2. :class:`AdmissionInterceptor`, before the handler parses anything of the
   call: the source address's bucket (a SubmitBatch costs its item count),
   commissioning's own buckets, a client already known to be over its rate
   (its token's bytes seen verified before: a peek, nothing charged), then
   the count of calls in flight;
3. the service, once the token is verified: the client's issuer and the
   target device (``GatewayService.admit`` = :func:`service_hook`).

Health checks and reflection are never refused here (only by the core cap).
Every refusal is RESOURCE_EXHAUSTED with the ``retry-after-ms`` trailer and
the hint in the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from ...config import Limits
from ..admission import Admission, Refusal, source_key
from ..errors import Overloaded
from ..tokens.auth import known_issuer

RETRY_AFTER_KEY = "retry-after-ms"

EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
COMMISSIONING = "/edgistry.gateway.v1.Commissioning/"
# calls that wait on a device (seconds to minutes): counted apart from the short ones
WAITING = frozenset({
    "/edgistry.gateway.v1.Gateway/Invoke", "/edgistry.gateway.v1.Gateway/WatchResult",
    "/edgistry.gateway.v1.Peer/Forward", "/edgistry.gateway.v1.Peer/ForwardWatch",
    "/edgistry.discovery.v1.Discovery/InvokeAny", "/edgistry.discovery.v1.Discovery/Watch",
    "/edgistry.twin.v1.Twins/WatchTwin",
})
BATCH = "/edgistry.gateway.v1.Gateway/SubmitBatch"
# calls the service charges to the client's issuer: a client over its rate is refused before them
CHARGED = frozenset({"/edgistry.gateway.v1.Gateway/Submit", "/edgistry.gateway.v1.Gateway/Invoke"})


def server_options(limits: Limits) -> dict:
    """Keyword arguments for ``grpc.aio.server``: the core's own caps."""
    kw: dict = {"options": []}
    if limits.grpc_max_concurrent_rpcs:
        kw["maximum_concurrent_rpcs"] = limits.grpc_max_concurrent_rpcs
    if limits.grpc_max_streams_per_connection:
        kw["options"].append(("grpc.max_concurrent_streams", limits.grpc_max_streams_per_connection))
    return kw


def trailer(wait_s: float) -> tuple[tuple[str, str], ...]:
    """The ``retry-after-ms`` trailing metadata for a wait of ``wait_s`` seconds."""
    return ((RETRY_AFTER_KEY, str(max(1, int(wait_s * 1000 + 0.999)))),)


def service_hook(admission: Admission) -> Callable[[bytes, bytes], None]:
    """``GatewayService.admit``: charge a verified client and its device, or raise Overloaded."""

    def admit(issuer: bytes, device: bytes) -> None:
        refusal = admission.caller(issuer, device)
        if refusal is not None:
            err = Overloaded(refusal.message, refusal.retry_after_s, refusal.reason, refusal.hold_s)
            err.hold = lambda: hold(admission, refusal.hold_s)  # the servicer awaits it before answering
            raise err

    return admit


async def hold(admission: Admission, hold_s: float) -> None:
    """Wait out a refusal's hold (admission.py) before it is answered, if the bound allows."""
    if hold_s > 0 and admission.hold():
        try:
            await asyncio.sleep(hold_s)
        finally:
            admission.unhold()


async def _refuse(context: grpc.aio.ServicerContext, admission: Admission, refusal: Refusal) -> None:
    await hold(admission, refusal.hold_s)
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message,
                        trailing_metadata=trailer(refusal.retry_after_s))


def _cost(method: str, request) -> int:
    if method == BATCH:
        return max(1, len(request.requests))
    return 1


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler with the source, commissioning and in-flight checks."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(self, continuation, details):
        method = details.method
        if method.startswith(EXEMPT_PREFIXES):
            return await continuation(details)
        if method in self._wrapped:  # one wrapper per method, made once
            return self._wrapped[method]
        handler = await continuation(details)
        wrapped = self._wrap(method, handler) if handler is not None else None
        self._wrapped[method] = wrapped
        return wrapped

    def _admit(self, method: str, request, context) -> Refusal | None:
        """The checks before the handler, cheapest first; None: admitted and counted in."""
        adm = self.admission
        key = source_key(context.peer())
        refusal = adm.source(key, _cost(method, request))
        if refusal is None and method.startswith(COMMISSIONING):
            refusal = adm.commission(key)
        if refusal is None and method in CHARGED:
            issuer = known_issuer(request.token)
            if issuer is not None:
                refusal = adm.client_over(issuer)
        return refusal or adm.enter(method in WAITING)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        adm, waiting = self.admission, method in WAITING
        if handler.request_streaming:
            return handler  # no client-streaming methods here; leave any such as they are
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                refusal = self._admit(method, request, context)
                if refusal is not None:
                    await _refuse(context, adm, refusal)
                    return
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    adm.leave(waiting)

            return handler._replace(unary_stream=unary_stream)
        inner = handler.unary_unary

        async def unary_unary(request, context):
            refusal = self._admit(method, request, context)
            if refusal is not None:
                await _refuse(context, adm, refusal)
                return None
            try:
                return await inner(request, context)
            finally:
                adm.leave(waiting)

        return handler._replace(unary_unary=unary_unary)
