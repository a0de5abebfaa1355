from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TwinProperty(_message.Message):
    __slots__ = ("key", "value", "version", "at_ms", "applied")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    version: int
    at_ms: int
    applied: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., at_ms: _Optional[int] = ..., applied: _Optional[bool] = ...) -> None: ...

class TwinState(_message.Message):
    __slots__ = ("target", "has_desired", "has_reported", "desired", "reported", "version", "applied", "applied_ms", "pending", "reported_ms", "report_error", "expected_at_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HAS_DESIRED_FIELD_NUMBER: _ClassVar[int]
    HAS_REPORTED_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_MS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    REPORTED_MS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    has_desired: bool
    has_reported: bool
    desired: _containers.RepeatedCompositeFieldContainer[TwinProperty]
    reported: _containers.RepeatedCompositeFieldContainer[TwinProperty]
    version: int
    applied: int
    applied_ms: int
    pending: int
    reported_ms: int
    report_error: str
    expected_at_ms: int
    def __init__(self, target: _Optional[str] = ..., has_desired: _Optional[bool] = ..., has_reported: _Optional[bool] = ..., desired: _Optional[_Iterable[_Union[TwinProperty, _Mapping]]] = ..., reported: _Optional[_Iterable[_Union[TwinProperty, _Mapping]]] = ..., version: _Optional[int] = ..., applied: _Optional[int] = ..., applied_ms: _Optional[int] = ..., pending: _Optional[int] = ..., reported_ms: _Optional[int] = ..., report_error: _Optional[str] = ..., expected_at_ms: _Optional[int] = ...) -> None: ...

class GetTwinRequest(_message.Message):
    __slots__ = ("target", "token")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    target: str
    token: bytes
    def __init__(self, target: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class DesiredChange(_message.Message):
    __slots__ = ("key", "value", "if_version", "delete")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    if_version: int
    delete: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., if_version: _Optional[int] = ..., delete: _Optional[bool] = ...) -> None: ...

class SetDesiredRequest(_message.Message):
    __slots__ = ("target", "token", "changes")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    target: str
    token: bytes
    changes: _containers.RepeatedCompositeFieldContainer[DesiredChange]
    def __init__(self, target: _Optional[str] = ..., token: _Optional[bytes] = ..., changes: _Optional[_Iterable[_Union[DesiredChange, _Mapping]]] = ...) -> None: ...
