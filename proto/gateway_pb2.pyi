from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNKNOWN: _ClassVar[RequestState]
    QUEUED: _ClassVar[RequestState]
    DELIVERED: _ClassVar[RequestState]
    DONE: _ClassVar[RequestState]
    EXPIRED: _ClassVar[RequestState]
    CANCELLED: _ClassVar[RequestState]
    FAILED: _ClassVar[RequestState]
    REVOKED: _ClassVar[RequestState]
STATE_UNKNOWN: RequestState
QUEUED: RequestState
DELIVERED: RequestState
DONE: RequestState
EXPIRED: RequestState
CANCELLED: RequestState
FAILED: RequestState
REVOKED: RequestState

class InvokeRequest(_message.Message):
    __slots__ = ("target", "method", "args", "token", "timeout_ms", "ttl_s", "service", "request_id", "attested", "chain_hashes", "revocation_height")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTESTED_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASHES_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    target: str
    method: str
    args: bytes
    token: bytes
    timeout_ms: int
    ttl_s: int
    service: str
    request_id: str
    attested: bool
    chain_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    revocation_height: int
    def __init__(self, target: _Optional[str] = ..., method: _Optional[str] = ..., args: _Optional[bytes] = ..., token: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., ttl_s: _Optional[int] = ..., service: _Optional[str] = ..., request_id: _Optional[str] = ..., attested: _Optional[bool] = ..., chain_hashes: _Optional[_Iterable[bytes]] = ..., revocation_height: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("request_id", "state", "payload", "error", "expected_at_ms", "expires_at_ms", "from_cache", "device_status")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: RequestState
    payload: bytes
    error: str
    expected_at_ms: int
    expires_at_ms: int
    from_cache: bool
    device_status: int
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., payload: _Optional[bytes] = ..., error: _Optional[str] = ..., expected_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., from_cache: _Optional[bool] = ..., device_status: _Optional[int] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[InvokeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[InvokeRequest, _Mapping]]] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("result", "code", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: Result
    code: int
    error: str
    def __init__(self, result: _Optional[_Union[Result, _Mapping]] = ..., code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ...) -> None: ...

class ResultRequest(_message.Message):
    __slots__ = ("request_id", "token", "revocation_height")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token: bytes
    revocation_height: int
    def __init__(self, request_id: _Optional[str] = ..., token: _Optional[bytes] = ..., revocation_height: _Optional[int] = ...) -> None: ...

class PairBegin(_message.Message):
    __slots__ = ("client_x25519",)
    CLIENT_X25519_FIELD_NUMBER: _ClassVar[int]
    client_x25519: bytes
    def __init__(self, client_x25519: _Optional[bytes] = ...) -> None: ...

class PairOffer(_message.Message):
    __slots__ = ("gateway_x25519", "gateway_pubkey", "signature", "gateway_id", "session", "chain_id", "tls_cert", "tls_cert_signature")
    GATEWAY_X25519_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_PUBKEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    gateway_x25519: bytes
    gateway_pubkey: bytes
    signature: bytes
    gateway_id: str
    session: str
    chain_id: str
    tls_cert: bytes
    tls_cert_signature: bytes
    def __init__(self, gateway_x25519: _Optional[bytes] = ..., gateway_pubkey: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., gateway_id: _Optional[str] = ..., session: _Optional[str] = ..., chain_id: _Optional[str] = ..., tls_cert: _Optional[bytes] = ..., tls_cert_signature: _Optional[bytes] = ...) -> None: ...

class PairComplete(_message.Message):
    __slots__ = ("session", "nonce", "ciphertext")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    session: str
    nonce: bytes
    ciphertext: bytes
    def __init__(self, session: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class PairPayload(_message.Message):
    __slots__ = ("root_token", "manifest", "cell", "resolution", "k", "encrypt", "link_id", "commission_code", "unpair")
    ROOT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    COMMISSION_CODE_FIELD_NUMBER: _ClassVar[int]
    UNPAIR_FIELD_NUMBER: _ClassVar[int]
    root_token: bytes
    manifest: bytes
    cell: int
    resolution: int
    k: int
    encrypt: bool
    link_id: bytes
    commission_code: str
    unpair: bool
    def __init__(self, root_token: _Optional[bytes] = ..., manifest: _Optional[bytes] = ..., cell: _Optional[int] = ..., resolution: _Optional[int] = ..., k: _Optional[int] = ..., encrypt: _Optional[bool] = ..., link_id: _Optional[bytes] = ..., commission_code: _Optional[str] = ..., unpair: _Optional[bool] = ...) -> None: ...

class PairResult(_message.Message):
    __slots__ = ("pseudonym", "identity_token", "app_token", "owner_handle", "link_endpoint", "gateway_id", "height", "cell", "discovery_known", "discovery")
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    APP_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_HANDLE_FIELD_NUMBER: _ClassVar[int]
    LINK_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_KNOWN_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    pseudonym: bytes
    identity_token: bytes
    app_token: bytes
    owner_handle: str
    link_endpoint: str
    gateway_id: str
    height: int
    cell: int
    discovery_known: bool
    discovery: _containers.RepeatedCompositeFieldContainer[PairVisibility]
    def __init__(self, pseudonym: _Optional[bytes] = ..., identity_token: _Optional[bytes] = ..., app_token: _Optional[bytes] = ..., owner_handle: _Optional[str] = ..., link_endpoint: _Optional[str] = ..., gateway_id: _Optional[str] = ..., height: _Optional[int] = ..., cell: _Optional[int] = ..., discovery_known: _Optional[bool] = ..., discovery: _Optional[_Iterable[_Union[PairVisibility, _Mapping]]] = ...) -> None: ...

class PairVisibility(_message.Message):
    __slots__ = ("service_type", "disclosed_cell")
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISCLOSED_CELL_FIELD_NUMBER: _ClassVar[int]
    service_type: str
    disclosed_cell: int
    def __init__(self, service_type: _Optional[str] = ..., disclosed_cell: _Optional[int] = ...) -> None: ...

class PairSealed(_message.Message):
    __slots__ = ("nonce", "ciphertext")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    ciphertext: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayStatus(_message.Message):
    __slots__ = ("gateway_id", "revocation_height", "chain_silent_ms", "fail_closed")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_SILENT_MS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    revocation_height: int
    chain_silent_ms: int
    fail_closed: bool
    def __init__(self, gateway_id: _Optional[str] = ..., revocation_height: _Optional[int] = ..., chain_silent_ms: _Optional[int] = ..., fail_closed: _Optional[bool] = ...) -> None: ...

class Forwarded(_message.Message):
    __slots__ = ("request", "from_id", "sent_at_ms", "signature", "call", "result")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    request: InvokeRequest
    from_id: str
    sent_at_ms: int
    signature: bytes
    call: str
    result: ResultRequest
    def __init__(self, request: _Optional[_Union[InvokeRequest, _Mapping]] = ..., from_id: _Optional[str] = ..., sent_at_ms: _Optional[int] = ..., signature: _Optional[bytes] = ..., call: _Optional[str] = ..., result: _Optional[_Union[ResultRequest, _Mapping]] = ...) -> None: ...
