"""Gateway protobuf messages to and from the service's plain values (pure)."""

from __future__ import annotations

from ...proto import gateway_pb2 as gw
from .service import Call, Result


def to_call(req: gw.InvokeRequest, from_peer: bool = False) -> Call:
    """A call from a request; ``attested`` is honoured only from a signed peer forward."""
    return Call(req.target, req.method, req.args, req.token, req.timeout_ms, req.ttl_s, req.service, req.request_id,
                attested=from_peer and req.attested,
                chain=tuple(h for h in req.chain_hashes if len(h) == 32)[:16] if from_peer else (),
                revocation_height=req.revocation_height if from_peer else 0)


def to_request(call: Call) -> gw.InvokeRequest:
    return gw.InvokeRequest(target=call.target, method=call.method, args=call.args, token=call.token,
                            timeout_ms=call.timeout_ms, ttl_s=call.ttl_s, service=call.service,
                            request_id=call.request_id, attested=call.attested, chain_hashes=list(call.chain),
                            revocation_height=call.revocation_height)


def to_pb(res: Result) -> gw.Result:
    return gw.Result(request_id=res.request_id, state=res.state, payload=res.payload, error=res.error,
                     expected_at_ms=res.expected_at_ms, expires_at_ms=res.expires_at_ms,
                     from_cache=res.from_cache, device_status=res.device_status)


def result_fields(res: Result) -> dict:
    """A result as the fields of a ``gw.Result``: a message built from nested
    dicts is made in one pass, where a ``gw.Result`` handed to its parent
    message is built and then copied (a batch's answers are many)."""
    return {"request_id": res.request_id, "state": res.state, "payload": res.payload, "error": res.error,
            "expected_at_ms": res.expected_at_ms, "expires_at_ms": res.expires_at_ms,
            "from_cache": res.from_cache, "device_status": res.device_status}


def from_pb(msg: gw.Result) -> Result:
    return Result(msg.request_id, msg.state, msg.payload, msg.error, msg.expected_at_ms, msg.expires_at_ms,
                  msg.from_cache, msg.device_status)
