"""gRPC's rich error model, read without the googleapis package: ``google.rpc.Status`` and
``google.rpc.RetryInfo``, declared here field for field as in google/rpc/status.proto and
google/rpc/error_details.proto, in a private descriptor pool (no clash with that package
when it is installed too). The gateway's overload answer may carry a RetryInfo in the
``grpc-status-details-bin`` trailer; :func:`retry_delay` reads it.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import DecodeError

RETRY_INFO_TYPE = "google.rpc.RetryInfo"
_F = descriptor_pb2.FieldDescriptorProto


def _build() -> tuple[type, type]:
    pool = descriptor_pool.DescriptorPool()
    for dep in (any_pb2.DESCRIPTOR, duration_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(proto)
        pool.Add(proto)
    f = descriptor_pb2.FileDescriptorProto(name="edgistry/google_rpc_subset.proto", package="google.rpc",
                                           syntax="proto3",
                                           dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"])
    status = f.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    status.field.add(name="details", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                     type_name=".google.protobuf.Any")
    info = f.message_type.add(name="RetryInfo")
    info.field.add(name="retry_delay", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                   type_name=".google.protobuf.Duration")
    pool.Add(f)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(RETRY_INFO_TYPE)))


Status, RetryInfo = _build()


def retry_delay(status_bytes: bytes) -> float | None:
    """The RetryInfo delay (seconds) inside a serialised google.rpc.Status, or None."""
    try:
        status = Status.FromString(status_bytes)
    except DecodeError:
        return None
    for detail in status.details:
        if detail.type_url.rsplit("/", 1)[-1] != RETRY_INFO_TYPE:
            continue
        try:
            info = RetryInfo.FromString(detail.value)
        except DecodeError:
            return None
        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def status_with_retry_info(code: int, message: str, delay_s: float) -> bytes:
    """A serialised google.rpc.Status holding one RetryInfo (what a server would send)."""
    info = RetryInfo()
    info.retry_delay.seconds = int(delay_s)
    info.retry_delay.nanos = int(round((delay_s - int(delay_s)) * 1e9))
    status = Status(code=code, message=message)
    status.details.add(type_url="type.googleapis.com/" + RETRY_INFO_TYPE, value=info.SerializeToString())
    return status.SerializeToString()
