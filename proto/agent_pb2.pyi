from fleetpulse.proto import common_pb2 as _common_pb2
from fleetpulse.proto import metric_pb2 as _metric_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentRegister(_message.Message):
    __slots__ = ("agent_id", "hostname", "ip", "os", "arch", "version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    version: str
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("agent_id", "timestamp")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    timestamp: _common_pb2.Timestamp
    def __init__(self, agent_id: _Optional[str] = ..., timestamp: _Optional[_Union[_common_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MetricAck(_message.Message):
    __slots__ = ("success", "message", "error", "epoch", "sequence", "points")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    error: str
    epoch: int
    sequence: int
    points: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., points: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("register_response", "heartbeat_ack", "metric_ack")
    REGISTER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    METRIC_ACK_FIELD_NUMBER: _ClassVar[int]
    register_response: _common_pb2.Response
    heartbeat_ack: _common_pb2.Response
    metric_ack: MetricAck
    def __init__(self, register_response: _Optional[_Union[_common_pb2.Response, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[_common_pb2.Response, _Mapping]] = ..., metric_ack: _Optional[_Union[MetricAck, _Mapping]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "metrics", "metric_columns")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRIC_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    register: AgentRegister
    heartbeat: Heartbeat
    metrics: _metric_pb2.MetricBatch
    metric_columns: _metric_pb2.ColumnarBatch
    def __init__(self, register: _Optional[_Union[AgentRegister, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., metrics: _Optional[_Union[_metric_pb2.MetricBatch, _Mapping]] = ..., metric_columns: _Optional[_Union[_metric_pb2.ColumnarBatch, _Mapping]] = ...) -> None: ...
