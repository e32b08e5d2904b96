from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AllowRequest(_message.Message):
    __slots__ = ("tenant", "resource", "cost")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    resource: str
    cost: int
    def __init__(self, tenant: _Optional[str] = ..., resource: _Optional[str] = ..., cost: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("allowed", "tenant", "resource", "policy", "limit", "remaining", "reset_seconds", "reset_time", "retry_after_seconds", "retry_after_ms", "mode", "shadow", "would_allow", "window_seconds", "error")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESET_TIME_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    WOULD_ALLOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    tenant: str
    resource: str
    policy: str
    limit: int
    remaining: int
    reset_seconds: int
    reset_time: int
    retry_after_seconds: int
    retry_after_ms: int
    mode: str
    shadow: bool
    would_allow: bool
    window_seconds: float
    error: CheckError
    def __init__(self, allowed: _Optional[bool] = ..., tenant: _Optional[str] = ..., resource: _Optional[str] = ..., policy: _Optional[str] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_seconds: _Optional[int] = ..., reset_time: _Optional[int] = ..., retry_after_seconds: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., mode: _Optional[str] = ..., shadow: _Optional[bool] = ..., would_allow: _Optional[bool] = ..., window_seconds: _Optional[float] = ..., error: _Optional[_Union[CheckError, _Mapping]] = ...) -> None: ...

class AllowBatchRequest(_message.Message):
    __slots__ = ("checks",)
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[AllowRequest]
    def __init__(self, checks: _Optional[_Iterable[_Union[AllowRequest, _Mapping]]] = ...) -> None: ...

class CheckError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class AllowBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, results: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class GetQuotaRequest(_message.Message):
    __slots__ = ("tenant", "resource")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    resource: str
    def __init__(self, tenant: _Optional[str] = ..., resource: _Optional[str] = ...) -> None: ...

class BandQuota(_message.Message):
    __slots__ = ("limit", "window", "remaining", "reset_seconds", "window_seconds")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    window: str
    remaining: int
    reset_seconds: int
    window_seconds: float
    def __init__(self, limit: _Optional[int] = ..., window: _Optional[str] = ..., remaining: _Optional[int] = ..., reset_seconds: _Optional[int] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("tenant", "resource", "policy", "algorithm", "limit", "remaining", "reset_seconds", "reset_time", "shadow", "mode", "bands")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESET_TIME_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BANDS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    resource: str
    policy: str
    algorithm: str
    limit: int
    remaining: int
    reset_seconds: int
    reset_time: int
    shadow: bool
    mode: str
    bands: _containers.RepeatedCompositeFieldContainer[BandQuota]
    def __init__(self, tenant: _Optional[str] = ..., resource: _Optional[str] = ..., policy: _Optional[str] = ..., algorithm: _Optional[str] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_seconds: _Optional[int] = ..., reset_time: _Optional[int] = ..., shadow: _Optional[bool] = ..., mode: _Optional[str] = ..., bands: _Optional[_Iterable[_Union[BandQuota, _Mapping]]] = ...) -> None: ...
