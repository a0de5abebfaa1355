from . import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Latency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LATENCY_ANY: _ClassVar[Latency]
    IMMEDIATE: _ClassVar[Latency]
    SECONDS: _ClassVar[Latency]
    MINUTES: _ClassVar[Latency]
    HOURS: _ClassVar[Latency]
    STALE: _ClassVar[Latency]
LATENCY_ANY: Latency
IMMEDIATE: Latency
SECONDS: Latency
MINUTES: Latency
HOURS: Latency
STALE: Latency

class Region(_message.Message):
    __slots__ = ("lat", "lon", "radius_km", "cells")
    LAT_FIELD_NUMBER: _ClassVar[int]
    LON_FIELD_NUMBER: _ClassVar[int]
    RADIUS_KM_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    lat: float
    lon: float
    radius_km: float
    cells: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lat: _Optional[float] = ..., lon: _Optional[float] = ..., radius_km: _Optional[float] = ..., cells: _Optional[_Iterable[int]] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("max_latency", "seen_within_s")
    MAX_LATENCY_FIELD_NUMBER: _ClassVar[int]
    SEEN_WITHIN_S_FIELD_NUMBER: _ClassVar[int]
    max_latency: Latency
    seen_within_s: int
    def __init__(self, max_latency: _Optional[_Union[Latency, str]] = ..., seen_within_s: _Optional[int] = ...) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ("token", "service_type", "region", "filters", "page_size", "page_token")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    service_type: str
    region: Region
    filters: Filters
    page_size: int
    page_token: str
    def __init__(self, token: _Optional[bytes] = ..., service_type: _Optional[str] = ..., region: _Optional[_Union[Region, _Mapping]] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Handle(_message.Message):
    __slots__ = ("handle", "cell", "latency", "gateway", "expires_at_ms")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    handle: str
    cell: int
    latency: Latency
    gateway: str
    expires_at_ms: int
    def __init__(self, handle: _Optional[str] = ..., cell: _Optional[int] = ..., latency: _Optional[_Union[Latency, str]] = ..., gateway: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("handles", "next_page_token")
    HANDLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    handles: _containers.RepeatedCompositeFieldContainer[Handle]
    next_page_token: str
    def __init__(self, handles: _Optional[_Iterable[_Union[Handle, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("token", "handle")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    handle: str
    def __init__(self, token: _Optional[bytes] = ..., handle: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("valid", "cell", "service_type", "gateway", "expires_at_ms")
    VALID_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    cell: int
    service_type: str
    gateway: str
    expires_at_ms: int
    def __init__(self, valid: _Optional[bool] = ..., cell: _Optional[int] = ..., service_type: _Optional[str] = ..., gateway: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class InvokeAnyRequest(_message.Message):
    __slots__ = ("token", "service_type", "region", "filters", "method", "args", "timeout_ms", "ttl_s")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    service_type: str
    region: Region
    filters: Filters
    method: str
    args: bytes
    timeout_ms: int
    ttl_s: int
    def __init__(self, token: _Optional[bytes] = ..., service_type: _Optional[str] = ..., region: _Optional[_Union[Region, _Mapping]] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., method: _Optional[str] = ..., args: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("token", "service_type", "region", "filters")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    service_type: str
    region: Region
    filters: Filters
    def __init__(self, token: _Optional[bytes] = ..., service_type: _Optional[str] = ..., region: _Optional[_Union[Region, _Mapping]] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("kind", "handle", "height")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchEvent.Kind]
        APPEAR: _ClassVar[WatchEvent.Kind]
        LEAVE: _ClassVar[WatchEvent.Kind]
    KIND_UNSPECIFIED: WatchEvent.Kind
    APPEAR: WatchEvent.Kind
    LEAVE: WatchEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    kind: WatchEvent.Kind
    handle: Handle
    height: int
    def __init__(self, kind: _Optional[_Union[WatchEvent.Kind, str]] = ..., handle: _Optional[_Union[Handle, _Mapping]] = ..., height: _Optional[int] = ...) -> None: ...
