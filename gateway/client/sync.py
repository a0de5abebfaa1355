"""The blocking client: :class:`Client`.

Every call takes ``timeout`` (seconds; the client's default when None),
covering its retries, and ``token`` (the client's token when None). Calls
that cannot change anything twice are retried on UNAVAILABLE and on
RESOURCE_EXHAUSTED with a retry-after hint (:mod:`.retry`); submits and
invokes carry a client-chosen request id, so their retries are idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from . import retry as retries
from .base import INVOKE_SLACK_S, MAX_BATCH, STUBS, ClientBase, NearLike, next_page
from .errors import DeadlineExceeded, RemoteError, Unavailable, from_rpc_error, watch_timeout
from .models import Call, Handle, Latency, Page, Resolved, Result, WatchEvent
from .tokens import TokenLike
from .twins import TwinMethods
from ...proto import discovery_pb2 as dpb
from ...proto import gateway_pb2 as gpb


class Client(TwinMethods, ClientBase):
    """A blocking client of one gateway. Use it as a context manager, or call :meth:`close`.

    ``target``: HOST[:PORT] (port 26670 when omitted); ``token``: the default token
    (a Token, its bytes or text, or a file path). TLS, one of: ``pin`` (the gateway's
    certificate: a file or a :class:`~edgistry.gateway.tls.Pin`), ``tls_from_registry``
    (node RPC URLs that must all hold the same record of the gateway, found by its
    address or ``gateway_id``; pins.py) or ``tls`` (a :class:`~.transport.TLS`);
    ``insecure=True`` instead speaks plaintext to a gateway run with ``--insecure``
    (a token then goes to loopback only);
    ``timeout``: the default per-call budget in seconds; ``retry``: the retry policy.
    Device twins: :meth:`get_twin`, :meth:`set_desired`, :meth:`watch_twin` (:mod:`.twins`).
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the client may not be used afterwards)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stubs.clear()

    def _stub(self, service: str) -> Any:
        stub = self._stubs.get(service)
        if stub is None:
            if self._channel is None:
                self._channel = self.transport.channel()
            stub = self._stubs[service] = STUBS[service](self._channel)
        return stub

    # ---- the generic call ----

    def unary(self, service: str, method: str, request: Any, *, timeout: float | None = None,
              idempotent: bool = True, slack: float = 0.0, request_id: str = "") -> Any:
        """One unary call with retries and errors mapped (for tools built on the SDK).

        ``service``: a key of ``STUBS``; ``slack``: extra deadline beyond ``timeout``
        (a call that itself waits ``timeout`` on the server)."""
        stub_method = getattr(self._stub(service), method)
        policy = self.retry if idempotent else retries.NO_RETRY

        def attempt(left: float | None) -> Any:
            try:
                return stub_method(request, timeout=max(left or 0.0, 0.001) + slack)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, self.target, request_id) from exc

        return retries.call(attempt, policy, self._deadline(timeout))

    # ---- discovery ----

    def discover(self, service_type: str, near: NearLike | None = None, radius_km: float = 1.0, *,
                 max_latency: Latency | str | None = None, seen_within_s: int = 0, page_size: int = 0,
                 max_pages: int | None = None, timeout: float | None = None,
                 token: TokenLike | None = None) -> Iterator[Page]:
        """Pages of handles to devices offering ``service_type`` in a region (fetched as you iterate)."""
        req = self._discover_req(service_type, near, radius_km, max_latency, seen_within_s, page_size, token)
        pages, seen = 0, set()
        while True:
            resp = self.unary("discovery", "Discover", req, timeout=timeout)
            pages += 1
            yield Page(tuple(Handle.from_pb(h) for h in resp.handles), resp.next_page_token)
            if not resp.next_page_token or (max_pages is not None and pages >= max_pages):
                return
            req.page_token = next_page(resp.next_page_token, seen, self.target)

    def resolve(self, handle: str | Handle, *, timeout: float | None = None,
                token: TokenLike | None = None) -> Resolved:
        """Whether a handle is still good here, with its coarse cell and type (never the device)."""
        resp = self.unary("discovery", "Resolve", dpb.ResolveRequest(token=self._token(token), handle=str(handle)),
                          timeout=timeout)
        return Resolved(resp.valid, resp.cell, resp.service_type, resp.gateway, resp.expires_at_ms)

    def watch(self, service_type: str, near: NearLike | None = None, radius_km: float = 1.0, *,
              max_latency: Latency | str | None = None, seen_within_s: int = 0, timeout: float | None = None,
              token: TokenLike | None = None) -> Iterator[WatchEvent]:
        """Handles appearing and leaving in a region: the current ones first, then each change.

        Runs until ``timeout`` (None: until you stop iterating). Opening the stream is
        retried; a stream broken after its first event raises (handles it gave may be stale)."""
        req = self._watch_req(service_type, near, radius_km, max_latency, seen_within_s, token)
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff, seen = retries.Backoff(self.retry), False
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            stream = self._stub("discovery").Watch(req, timeout=left)
            try:
                for msg in stream:
                    seen = True
                    yield WatchEvent.from_pb(msg)
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.target)
                if isinstance(err, DeadlineExceeded) and deadline is not None:
                    return  # the caller's time is up: the watch simply ends
                if seen or not isinstance(err, Unavailable) or backoff.retries + 1 >= self.retry.attempts:
                    raise err from exc
            finally:
                stream.cancel()
            time.sleep(backoff.next())

    def invoke_any(self, service_type: str, method: str, args: Any = None, *, near: NearLike | None = None,
                   radius_km: float = 1.0, max_latency: Latency | str | None = None, seen_within_s: int = 0,
                   timeout: float | None = None, ttl_s: int = 0, token: TokenLike | None = None) -> Result:
        """Let the Edgistry pick a device of ``service_type`` near a place and call ``method`` on it.
        Not retried on its own: it carries no request id, and a method the token was granted
        write rights to may be reached this way too (retry it yourself when it was a read)."""
        wait = self.timeout if timeout is None else timeout
        req = self._any_req(service_type, method, args, near, radius_km, max_latency, seen_within_s, wait, ttl_s,
                            token)
        # not retried: an invoke-any carries no request id, and a token granted a mutating
        # method may invoke it this way, so a retry could run it twice (on another device, even)
        return Result.from_pb(self.unary("discovery", "InvokeAny", req, timeout=wait, slack=INVOKE_SLACK_S,
                                            idempotent=False))

    # ---- requests to one device ----

    def invoke(self, target: str | Handle, method: str, args: Any = None, *, service: str = "",
               timeout: float | None = None, ttl_s: int = 0, request_id: str | None = None,
               token: TokenLike | None = None, on_update: Callable[[Result], None] | None = None) -> Result:
        """Call ``method`` of the device ``target`` (a handle) and wait up to ``timeout`` for its answer.

        Returns the final :class:`Result` (``.value`` is the answer or raises
        :class:`~.errors.RequestFailed`); raises :class:`~.errors.DeadlineExceeded`, whose
        ``request_id`` can be fetched later, when the device does not answer in time.
        ``on_update`` is called with each state the request passes through (queued, delivered...).
        """
        wait = self.timeout if timeout is None else timeout
        req = self._invoke_req(target, method, args, token, wait, ttl_s, service, request_id)
        if on_update is None:
            return Result.from_pb(self.unary("gateway", "Invoke", req, timeout=wait, slack=INVOKE_SLACK_S,
                                             request_id=req.request_id))
        deadline = time.monotonic() + wait
        res = Result.from_pb(self.unary("gateway", "Submit", req, timeout=wait, request_id=req.request_id))
        on_update(res)
        if res.final:
            return res
        last = res
        for res in self.watch_result(res.request_id, timeout=max(deadline - time.monotonic(), 0.001), token=token):
            if res.state != last.state:
                on_update(res)
            last = res
        return last

    def submit(self, target: str | Handle, method: str, args: Any = None, *, service: str = "", ttl_s: int = 0,
               request_id: str | None = None, timeout: float | None = None,
               token: TokenLike | None = None) -> Result:
        """Queue a call and return at once (QUEUED, or DONE from the gateway's cache)."""
        req = self._invoke_req(target, method, args, token, 0, ttl_s, service, request_id)
        return Result.from_pb(self.unary("gateway", "Submit", req, timeout=timeout, request_id=req.request_id))

    def batch(self, calls: Iterable[Call], *, timeout: float | None = None,
              token: TokenLike | None = None) -> list[Result | RemoteError]:
        """Submit many calls (split into batches of 256); one outcome per call, in order:
        a :class:`Result`, or the error that call alone met."""
        reqs = self._batch_reqs(calls, token)
        out: list[Result | RemoteError] = []
        for i in range(0, len(reqs), MAX_BATCH):
            chunk = reqs[i:i + MAX_BATCH]
            resp = self.unary("gateway", "SubmitBatch", gpb.SubmitBatchRequest(requests=chunk), timeout=timeout)
            out.extend(self._batch_items(resp, chunk))
        return out

    def result(self, request_id: str, *, timeout: float | None = None, token: TokenLike | None = None) -> Result:
        """The request's current state (and answer when DONE). ``token``: the one it was made with."""
        req = self._result_req(request_id, token)
        return Result.from_pb(self.unary("gateway", "GetResult", req, timeout=timeout, request_id=request_id))

    def cancel(self, request_id: str, *, timeout: float | None = None, token: TokenLike | None = None) -> Result:
        """Cancel a request not answered yet; returns its state afterwards (CANCELLED, or the
        final state it had already reached)."""
        req = self._result_req(request_id, token)
        return Result.from_pb(self.unary("gateway", "Cancel", req, timeout=timeout, request_id=request_id))

    def watch_result(self, request_id: str, *, timeout: float | None = None,
                     token: TokenLike | None = None) -> Iterator[Result]:
        """The request's state now, then each change, ending at a final state.

        Raises :class:`~.errors.DeadlineExceeded` (with ``last``) when ``timeout``
        passes first. A broken stream is reopened (a watch changes nothing)."""
        req = self._result_req(request_id, token)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        backoff, last = retries.Backoff(self.retry), None
        while True:
            stream = self._stub("gateway").WatchResult(req, timeout=max(deadline - time.monotonic(), 0.001))
            try:
                for msg in stream:
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
            time.sleep(min(backoff.next(), max(deadline - time.monotonic(), 0.0)))

    def wait(self, request_id: str, *, timeout: float | None = None, token: TokenLike | None = None) -> Result:
        """The request's final state, waiting up to ``timeout`` (else DeadlineExceeded with ``last``)."""
        res = None
        for res in self.watch_result(request_id, timeout=timeout, token=token):
            pass
        assert res is not None
        return res
