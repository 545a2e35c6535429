from fleetpulse.proto import common_pb2 as _common_pb2
from fleetpulse.proto import metric_pb2 as _metric_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentRegister(_message.Message):
    __slots__ = ("agent_id", "hostname", "ip", "os", "arch", "version", "machine_id", "protocol", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    version: str
    machine_id: str
    protocol: int
    tags: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., version: _Optional[str] = ..., machine_id: _Optional[str] = ..., protocol: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("agent_id", "timestamp")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    timestamp: _common_pb2.Timestamp
    def __init__(self, agent_id: _Optional[str] = ..., timestamp: _Optional[_Union[_common_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MetricAck(_message.Message):
    __slots__ = ("success", "message", "error", "epoch", "sequence", "points", "retry_after_ms")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    error: str
    epoch: int
    sequence: int
    points: int
    retry_after_ms: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., points: _Optional[int] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class SequenceRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Committed(_message.Message):
    __slots__ = ("epoch", "ranges")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    ranges: _containers.RepeatedCompositeFieldContainer[SequenceRange]
    def __init__(self, epoch: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[SequenceRange, _Mapping]]] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("agent_id", "token")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class Disconnect(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class AgentSettings(_message.Message):
    __slots__ = ("version", "collect_interval_ms", "heartbeat_interval_ms", "collectors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    collect_interval_ms: int
    heartbeat_interval_ms: int
    collectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., collect_interval_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., collectors: _Optional[_Iterable[str]] = ...) -> None: ...

class SettingsStatus(_message.Message):
    __slots__ = ("version", "applied", "error", "collect_interval_ms", "heartbeat_interval_ms", "collectors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COLLECT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    applied: bool
    error: str
    collect_interval_ms: int
    heartbeat_interval_ms: int
    collectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., applied: _Optional[bool] = ..., error: _Optional[str] = ..., collect_interval_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., collectors: _Optional[_Iterable[str]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("register_response", "heartbeat_ack", "metric_ack", "committed", "credential", "settings")
    REGISTER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    METRIC_ACK_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    register_response: _common_pb2.Response
    heartbeat_ack: _common_pb2.Response
    metric_ack: MetricAck
    committed: Committed
    credential: Credential
    settings: AgentSettings
    def __init__(self, register_response: _Optional[_Union[_common_pb2.Response, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[_common_pb2.Response, _Mapping]] = ..., metric_ack: _Optional[_Union[MetricAck, _Mapping]] = ..., committed: _Optional[_Union[Committed, _Mapping]] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ..., settings: _Optional[_Union[AgentSettings, _Mapping]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "metrics", "metric_columns", "disconnect", "settings_status")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRIC_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_STATUS_FIELD_NUMBER: _ClassVar[int]
    register: AgentRegister
    heartbeat: Heartbeat
    metrics: _metric_pb2.MetricBatch
    metric_columns: _metric_pb2.ColumnarBatch
    disconnect: Disconnect
    settings_status: SettingsStatus
    def __init__(self, register: _Optional[_Union[AgentRegister, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., metrics: _Optional[_Union[_metric_pb2.MetricBatch, _Mapping]] = ..., metric_columns: _Optional[_Union[_metric_pb2.ColumnarBatch, _Mapping]] = ..., disconnect: _Optional[_Union[Disconnect, _Mapping]] = ..., settings_status: _Optional[_Union[SettingsStatus, _Mapping]] = ...) -> None: ...
