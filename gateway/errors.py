"""The gateway's domain errors: one tree, mapped to gRPC codes in one place.

Domain code (store, service, pairing, peer) raises these; the gRPC adapter
(``grpc_api.py``) turns each into a status with :data:`GRPC_CODES`, and the
CLI turns a status back into a one-line user error. Nothing else maps errors.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller."""

    reason = "error"  # a short label for metrics (rejections by reason)


class BadRequest(GatewayError):
    """Malformed input: bad JSON arguments, unknown method, bad ids."""

    reason = "bad_request"


class Unauthorized(GatewayError):
    """The token is missing, forged, of the wrong origin, revoked, expired or too weak."""

    reason = "token"


class NotFound(GatewayError):
    """No such device, request or handle."""

    reason = "not_found"


class QueueFull(GatewayError):
    """The device's queue is at its maximum depth: backpressure, try later."""

    reason = "queue_full"


class InvokeTimeout(GatewayError):
    """Invoke's deadline passed; the request stays queued and can be fetched later."""

    reason = "deadline"

    def __init__(self, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.request_id = request_id


class Conflict(GatewayError):
    """A client-chosen request id was reused for a different call."""

    reason = "conflict"


class Precondition(GatewayError):
    """The call cannot be done in the current state (paired elsewhere, wrong code...)."""

    reason = "precondition"


class VersionConflict(GatewayError):
    """A compare-and-set lost: the value changed since the caller read its version."""

    reason = "version_conflict"


class Unavailable(GatewayError):
    """A dependency (the chain, a peer gateway) cannot be reached now; retry."""

    reason = "unavailable"


def _codes() -> dict[type[GatewayError], object]:
    import grpc

    return {
        BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
        Unauthorized: grpc.StatusCode.PERMISSION_DENIED,
        NotFound: grpc.StatusCode.NOT_FOUND,
        QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
        InvokeTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
        Conflict: grpc.StatusCode.ALREADY_EXISTS,
        Precondition: grpc.StatusCode.FAILED_PRECONDITION,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
        VersionConflict: grpc.StatusCode.ABORTED,
    }


def grpc_code(err: GatewayError):
    """The gRPC status code for a domain error (INTERNAL for anything unmapped)."""
    import grpc

    for cls in type(err).__mro__:
        code = _codes().get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def from_grpc(code, details: str) -> GatewayError:
    """The domain error for a status received from a peer gateway (forwarding keeps its meaning)."""
    for cls, c in _codes().items():
        if c == code:
            return cls(details)
    return Unavailable(details)
