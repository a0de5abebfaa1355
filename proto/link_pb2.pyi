from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_UNKNOWN: _ClassVar[FrameType]
    HELLO: _ClassVar[FrameType]
    CHALLENGE: _ClassVar[FrameType]
    PROOF: _ClassVar[FrameType]
    ACCEPT: _ClassVar[FrameType]
    RESUME: _ClassVar[FrameType]
    RESUMED: _ClassVar[FrameType]
    REQUESTS: _ClassVar[FrameType]
    RESPONSES: _ClassVar[FrameType]
    ACK: _ClassVar[FrameType]
    BYE: _ClassVar[FrameType]
    ERROR: _ClassVar[FrameType]
FRAME_UNKNOWN: FrameType
HELLO: FrameType
CHALLENGE: FrameType
PROOF: FrameType
ACCEPT: FrameType
RESUME: FrameType
RESUMED: FrameType
REQUESTS: FrameType
RESPONSES: FrameType
ACK: FrameType
BYE: FrameType
ERROR: FrameType

class LinkFrame(_message.Message):
    __slots__ = ("type", "seq", "body", "mac")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    type: int
    seq: int
    body: bytes
    mac: bytes
    def __init__(self, type: _Optional[int] = ..., seq: _Optional[int] = ..., body: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("version", "link_id", "identity_token", "nonce", "x25519")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    X25519_FIELD_NUMBER: _ClassVar[int]
    version: int
    link_id: bytes
    identity_token: bytes
    nonce: bytes
    x25519: bytes
    def __init__(self, version: _Optional[int] = ..., link_id: _Optional[bytes] = ..., identity_token: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., x25519: _Optional[bytes] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("enc_token_body", "nonce", "x25519")
    ENC_TOKEN_BODY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    X25519_FIELD_NUMBER: _ClassVar[int]
    enc_token_body: bytes
    nonce: bytes
    x25519: bytes
    def __init__(self, enc_token_body: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., x25519: _Optional[bytes] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("mac",)
    MAC_FIELD_NUMBER: _ClassVar[int]
    mac: bytes
    def __init__(self, mac: _Optional[bytes] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("mac", "ticket_id", "ticket_ttl_s", "encrypt")
    MAC_FIELD_NUMBER: _ClassVar[int]
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_TTL_S_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    mac: bytes
    ticket_id: bytes
    ticket_ttl_s: int
    encrypt: bool
    def __init__(self, mac: _Optional[bytes] = ..., ticket_id: _Optional[bytes] = ..., ticket_ttl_s: _Optional[int] = ..., encrypt: _Optional[bool] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("link_id", "ticket_id", "nonce", "mac")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    link_id: bytes
    ticket_id: bytes
    nonce: bytes
    mac: bytes
    def __init__(self, link_id: _Optional[bytes] = ..., ticket_id: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class Resumed(_message.Message):
    __slots__ = ("nonce", "mac", "ticket_id", "ticket_ttl_s", "encrypt")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_TTL_S_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    mac: bytes
    ticket_id: bytes
    ticket_ttl_s: int
    encrypt: bool
    def __init__(self, nonce: _Optional[bytes] = ..., mac: _Optional[bytes] = ..., ticket_id: _Optional[bytes] = ..., ticket_ttl_s: _Optional[int] = ..., encrypt: _Optional[bool] = ...) -> None: ...

class DeviceRequest(_message.Message):
    __slots__ = ("request_id", "service", "method", "args", "request_token", "expires_at_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: bytes
    service: str
    method: str
    args: bytes
    request_token: bytes
    expires_at_ms: int
    def __init__(self, request_id: _Optional[bytes] = ..., service: _Optional[str] = ..., method: _Optional[str] = ..., args: _Optional[bytes] = ..., request_token: _Optional[bytes] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class Requests(_message.Message):
    __slots__ = ("items", "more", "revoked", "gateway_now_ms", "twin")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_NOW_MS_FIELD_NUMBER: _ClassVar[int]
    TWIN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DeviceRequest]
    more: bool
    revoked: _containers.RepeatedScalarFieldContainer[bytes]
    gateway_now_ms: int
    twin: _containers.RepeatedCompositeFieldContainer[TwinChange]
    def __init__(self, items: _Optional[_Iterable[_Union[DeviceRequest, _Mapping]]] = ..., more: _Optional[bool] = ..., revoked: _Optional[_Iterable[bytes]] = ..., gateway_now_ms: _Optional[int] = ..., twin: _Optional[_Iterable[_Union[TwinChange, _Mapping]]] = ...) -> None: ...

class TwinChange(_message.Message):
    __slots__ = ("key", "value", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    version: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ...) -> None: ...

class DeviceResponse(_message.Message):
    __slots__ = ("request_id", "status", "payload", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: bytes
    status: int
    payload: bytes
    error: str
    def __init__(self, request_id: _Optional[bytes] = ..., status: _Optional[int] = ..., payload: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class Responses(_message.Message):
    __slots__ = ("items", "twin")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TWIN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DeviceResponse]
    twin: TwinReport
    def __init__(self, items: _Optional[_Iterable[_Union[DeviceResponse, _Mapping]]] = ..., twin: _Optional[_Union[TwinReport, _Mapping]] = ...) -> None: ...

class TwinReport(_message.Message):
    __slots__ = ("applied", "reported", "replace")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    applied: int
    reported: _containers.RepeatedCompositeFieldContainer[TwinChange]
    replace: bool
    def __init__(self, applied: _Optional[int] = ..., reported: _Optional[_Iterable[_Union[TwinChange, _Mapping]]] = ..., replace: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Bye(_message.Message):
    __slots__ = ("sleep_s",)
    SLEEP_S_FIELD_NUMBER: _ClassVar[int]
    sleep_s: int
    def __init__(self, sleep_s: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
