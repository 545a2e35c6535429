from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AgentEnvelope(_message.Message):
    __slots__ = ("register", "heartbeat", "metrics", "metric_columns", "disconnect", "settings_status")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRIC_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_STATUS_FIELD_NUMBER: _ClassVar[int]
    register: bytes
    heartbeat: bytes
    metrics: bytes
    metric_columns: bytes
    disconnect: bytes
    settings_status: bytes
    def __init__(self, register: _Optional[bytes] = ..., heartbeat: _Optional[bytes] = ..., metrics: _Optional[bytes] = ..., metric_columns: _Optional[bytes] = ..., disconnect: _Optional[bytes] = ..., settings_status: _Optional[bytes] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("agent_id", "metrics", "epoch", "sequence")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    metrics: _containers.RepeatedScalarFieldContainer[bytes]
    epoch: int
    sequence: int
    def __init__(self, agent_id: _Optional[str] = ..., metrics: _Optional[_Iterable[bytes]] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class ColumnarView(_message.Message):
    __slots__ = ("agent_id", "epoch", "sequence", "series", "values", "timestamps_ns")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_NS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    sequence: int
    series: bytes
    values: bytes
    timestamps_ns: bytes
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., series: _Optional[bytes] = ..., values: _Optional[bytes] = ..., timestamps_ns: _Optional[bytes] = ...) -> None: ...

class ColumnarHeader(_message.Message):
    __slots__ = ("agent_id", "epoch", "sequence", "values")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    sequence: int
    values: bytes
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...
