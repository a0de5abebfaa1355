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


class PeerNotTrusted(Unauthorized):
    """A gateway-to-gateway call whose TLS certificate is missing or not the caller's registered one."""

    reason = "peer_tls"


class NotFound(GatewayError):
    """No such device, request or handle."""

    reason = "not_found"


class QueueFull(GatewayError):
    """The device's queue is at its maximum depth: backpressure, try later."""

    reason = "queue_full"


class Overloaded(GatewayError):
    """Admission control refused the call (a rate limit, too many calls): retry later.

    ``retry_after_s`` travels to the client as the ``retry-after-ms`` trailer."""

    reason = "overloaded"

    def __init__(self, message: str, retry_after_s: float, reason: str = "overloaded", hold_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.hold_s = hold_s  # answer after this long (admission.py: held refusals)
        self.hold = None  # set by the admission adapter: an awaitable factory that waits it out


class StorageFull(GatewayError):
    """The gateway's store has no room: nothing was stored; retry later."""

    reason = "storage_full"
    retry_after_s = 5.0


class DiskFull(StorageFull):
    """The filesystem holding the store is full (ENOSPC)."""

    reason = "disk_full"


class MapFull(StorageFull):
    """The store's LMDB map (its configured size) is full."""

    reason = "map_full"


class StorageUnavailable(GatewayError):
    """The gateway's store cannot be written now (its writer is restarting): nothing was stored; retry."""

    reason = "storage_unavailable"
    retry_after_s = 1.0


class StoreIOFailed(StorageUnavailable):
    """A commit failed with an I/O error other than a full disk: nothing was stored; retry."""

    reason = "store_io"
    retry_after_s = 5.0


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
        # after the general ones, so that from_grpc maps a peer's status to those
        Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
        StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
        StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
        VersionConflict: grpc.StatusCode.ABORTED,
    }


def retry_after_ms(err: GatewayError) -> int | None:
    """The ``retry-after-ms`` hint of an error that has one."""
    wait = getattr(err, "retry_after_s", None)
    return None if wait is None else max(1, int(wait * 1000 + 0.999))


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
