"""The asyncio client: :class:`AsyncClient`, the same operations as :class:`~.sync.Client`
with ``await`` (and ``async for`` over pages and streams). Its channel opens at the
first call, inside the running loop; use one client per event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from . import retry as retries
from .base import INVOKE_SLACK_S, MAX_BATCH, STUBS, ClientBase, NearLike, next_page
from .errors import DeadlineExceeded, RemoteError, Unavailable, from_rpc_error, watch_timeout
from .models import Call, Handle, Latency, Page, Resolved, Result, WatchEvent
from .tokens import TokenLike
from .twins import AsyncTwinMethods
from ...proto import discovery_pb2 as dpb
from ...proto import gateway_pb2 as gpb


class AsyncClient(AsyncTwinMethods, ClientBase):
    """An asyncio client of one gateway: ``async with AsyncClient(...) as client``.

    Arguments as for :class:`~.sync.Client`."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stubs.clear()

    def _stub(self, service: str) -> Any:
        stub = self._stubs.get(service)
        if stub is None:
            if self._channel is None:
                self._channel = self.transport.aio_channel()
            stub = self._stubs[service] = STUBS[service](self._channel)
        return stub

    async def unary(self, service: str, method: str, request: Any, *, timeout: float | None = None,
                    idempotent: bool = True, slack: float = 0.0, request_id: str = "") -> Any:
        """One unary call with retries and errors mapped (see :meth:`Client.unary`)."""
        stub_method = getattr(self._stub(service), method)
        policy = self.retry if idempotent else retries.NO_RETRY

        async def attempt(left: float | None) -> Any:
            try:
                return await stub_method(request, timeout=max(left or 0.0, 0.001) + slack)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, self.target, request_id) from exc

        return await retries.call_async(attempt, policy, self._deadline(timeout))

    # ---- discovery ----

    async def discover(self, service_type: str, near: NearLike | None = None, radius_km: float = 1.0, *,
                       max_latency: Latency | str | None = None, seen_within_s: int = 0, page_size: int = 0,
                       max_pages: int | None = None, timeout: float | None = None,
                       token: TokenLike | None = None) -> AsyncIterator[Page]:
        """Pages of handles (``async for page in client.discover(...)``)."""
        req = self._discover_req(service_type, near, radius_km, max_latency, seen_within_s, page_size, token)
        pages, seen = 0, set()
        while True:
            resp = await self.unary("discovery", "Discover", req, timeout=timeout)
            pages += 1
            yield Page(tuple(Handle.from_pb(h) for h in resp.handles), resp.next_page_token)
            if not resp.next_page_token or (max_pages is not None and pages >= max_pages):
                return
            req.page_token = next_page(resp.next_page_token, seen, self.target)

    async def resolve(self, handle: str | Handle, *, timeout: float | None = None,
                      token: TokenLike | None = None) -> Resolved:
        resp = await self.unary("discovery", "Resolve",
                                dpb.ResolveRequest(token=self._token(token), handle=str(handle)), timeout=timeout)
        return Resolved(resp.valid, resp.cell, resp.service_type, resp.gateway, resp.expires_at_ms)

    async def watch(self, service_type: str, near: NearLike | None = None, radius_km: float = 1.0, *,
                    max_latency: Latency | str | None = None, seen_within_s: int = 0, timeout: float | None = None,
                    token: TokenLike | None = None) -> AsyncIterator[WatchEvent]:
        """Handles appearing and leaving (see :meth:`Client.watch`)."""
        req = self._watch_req(service_type, near, radius_km, max_latency, seen_within_s, token)
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff, seen = retries.Backoff(self.retry), False
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            stream = self._stub("discovery").Watch(req, timeout=left)
            try:
                async for msg in stream:
                    seen = True
                    yield WatchEvent.from_pb(msg)
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.target)
                if isinstance(err, DeadlineExceeded) and deadline is not None:
                    return
                if seen or not isinstance(err, Unavailable) or backoff.retries + 1 >= self.retry.attempts:
                    raise err from exc
            finally:
                stream.cancel()
            await asyncio.sleep(backoff.next())

    async def invoke_any(self, service_type: str, method: str, args: Any = None, *, near: NearLike | None = None,
                         radius_km: float = 1.0, max_latency: Latency | str | None = None, seen_within_s: int = 0,
                         timeout: float | None = None, ttl_s: int = 0, token: TokenLike | None = None) -> Result:
        wait = self.timeout if timeout is None else timeout
        req = self._any_req(service_type, method, args, near, radius_km, max_latency, seen_within_s, wait, ttl_s,
                            token)
        # not retried: an invoke-any carries no request id, and a token granted a mutating
        # method may invoke it this way, so a retry could run it twice (on another device, even)
        return Result.from_pb(await self.unary("discovery", "InvokeAny", req, timeout=wait, slack=INVOKE_SLACK_S,
                                            idempotent=False))

    # ---- requests to one device ----

    async def invoke(self, target: str | Handle, method: str, args: Any = None, *, service: str = "",
                     timeout: float | None = None, ttl_s: int = 0, request_id: str | None = None,
                     token: TokenLike | None = None, on_update: Callable[[Result], None] | None = None) -> Result:
        """Call a method and wait for the answer (see :meth:`Client.invoke`)."""
        wait = self.timeout if timeout is None else timeout
        req = self._invoke_req(target, method, args, token, wait, ttl_s, service, request_id)
        if on_update is None:
            return Result.from_pb(await self.unary("gateway", "Invoke", req, timeout=wait, slack=INVOKE_SLACK_S,
                                                   request_id=req.request_id))
        deadline = time.monotonic() + wait
        res = Result.from_pb(await self.unary("gateway", "Submit", req, timeout=wait, request_id=req.request_id))
        on_update(res)
        if res.final:
            return res
        last = res
        async for res in self.watch_result(res.request_id, timeout=max(deadline - time.monotonic(), 0.001),
                                           token=token):
            if res.state != last.state:
                on_update(res)
            last = res
        return last

    async def submit(self, target: str | Handle, method: str, args: Any = None, *, service: str = "",
                     ttl_s: int = 0, request_id: str | None = None, timeout: float | None = None,
                     token: TokenLike | None = None) -> Result:
        req = self._invoke_req(target, method, args, token, 0, ttl_s, service, request_id)
        return Result.from_pb(await self.unary("gateway", "Submit", req, timeout=timeout,
                                               request_id=req.request_id))

    async def batch(self, calls: Iterable[Call], *, timeout: float | None = None,
                    token: TokenLike | None = None) -> list[Result | RemoteError]:
        reqs = self._batch_reqs(calls, token)
        out: list[Result | RemoteError] = []
        for i in range(0, len(reqs), MAX_BATCH):
            chunk = reqs[i:i + MAX_BATCH]
            resp = await self.unary("gateway", "SubmitBatch", gpb.SubmitBatchRequest(requests=chunk),
                                    timeout=timeout)
            out.extend(self._batch_items(resp, chunk))
        return out

    async def result(self, request_id: str, *, timeout: float | None = None,
                     token: TokenLike | None = None) -> Result:
        req = self._result_req(request_id, token)
        return Result.from_pb(await self.unary("gateway", "GetResult", req, timeout=timeout, request_id=request_id))

    async def cancel(self, request_id: str, *, timeout: float | None = None,
                     token: TokenLike | None = None) -> Result:
        req = self._result_req(request_id, token)
        return Result.from_pb(await self.unary("gateway", "Cancel", req, timeout=timeout, request_id=request_id))

    async def watch_result(self, request_id: str, *, timeout: float | None = None,
                           token: TokenLike | None = None) -> AsyncIterator[Result]:
        """The request's state now, then each change (see :meth:`Client.watch_result`)."""
        req = self._result_req(request_id, token)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        backoff, last = retries.Backoff(self.retry), None
        while True:
            stream = self._stub("gateway").WatchResult(req, timeout=max(deadline - time.monotonic(), 0.001))
            try:
                async for msg in stream:
                    res = Result.from_pb(msg)
                    backoff.reset()
                    if last is None or res.state != last.state:
                        yield res
                    last = res
                    if res.final:
                        return
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.target, request_id)
                if isinstance(err, DeadlineExceeded):
                    raise watch_timeout(err, last, timeout if timeout is not None else self.timeout) from exc
                if not isinstance(err, Unavailable) or backoff.retries + 1 >= self.retry.attempts:
                    raise err from exc
            finally:
                stream.cancel()
            await asyncio.sleep(min(backoff.next(), max(deadline - time.monotonic(), 0.0)))

    async def wait(self, request_id: str, *, timeout: float | None = None,
                   token: TokenLike | None = None) -> Result:
        """The request's final state, waiting up to ``timeout``."""
        res = None
        async for res in self.watch_result(request_id, timeout=timeout, token=token):
            pass
        assert res is not None
        return res
