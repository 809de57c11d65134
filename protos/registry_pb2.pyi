from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BulkAddressRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BulkAddressReply(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class PutChunkRequest(_message.Message):
    __slots__ = ("id", "data", "checksum")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    data: bytes
    checksum: bytes
    def __init__(self, id: _Optional[bytes] = ..., data: _Optional[bytes] = ..., checksum: _Optional[bytes] = ...) -> None: ...

class PutChunkReply(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...

class PutManyRequest(_message.Message):
    __slots__ = ("puts", "request_ids")
    PUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    puts: _containers.RepeatedScalarFieldContainer[bytes]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, puts: _Optional[_Iterable[bytes]] = ..., request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PackReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[PackItem, _Mapping]]] = ...) -> None: ...

class PackItem(_message.Message):
    __slots__ = ("code", "details", "detail", "reply")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: str
    detail: str
    reply: bytes
    def __init__(self, code: _Optional[int] = ..., details: _Optional[str] = ..., detail: _Optional[str] = ..., reply: _Optional[bytes] = ...) -> None: ...

class GetChunkRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class GetChunkReply(_message.Message):
    __slots__ = ("data", "checksum")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    checksum: bytes
    def __init__(self, data: _Optional[bytes] = ..., checksum: _Optional[bytes] = ...) -> None: ...

class HasChunksRequest(_message.Message):
    __slots__ = ("ids", "probe_only")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    probe_only: bool
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ..., probe_only: _Optional[bool] = ...) -> None: ...

class HasChunksReply(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, present: _Optional[_Iterable[bool]] = ...) -> None: ...

class DeleteChunksRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteChunksReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ListChunksRequest(_message.Message):
    __slots__ = ("after", "page_size")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    after: bytes
    page_size: int
    def __init__(self, after: _Optional[bytes] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListChunksReply(_message.Message):
    __slots__ = ("ids", "sizes")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ..., sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class MetadataRequest(_message.Message):
    __slots__ = ("op", "args", "linearizable")
    OP_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LINEARIZABLE_FIELD_NUMBER: _ClassVar[int]
    op: str
    args: bytes
    linearizable: bool
    def __init__(self, op: _Optional[str] = ..., args: _Optional[bytes] = ..., linearizable: _Optional[bool] = ...) -> None: ...

class MetadataReply(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    def __init__(self, result: _Optional[bytes] = ...) -> None: ...

class MetadataPack(_message.Message):
    __slots__ = ("commands", "request_ids")
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[MetadataRequest]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, commands: _Optional[_Iterable[_Union[MetadataRequest, _Mapping]]] = ..., request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AccessPing(_message.Message):
    __slots__ = ("seq", "seen", "seen_unlinks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    SEEN_UNLINKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    seen: str
    seen_unlinks: str
    def __init__(self, seq: _Optional[int] = ..., seen: _Optional[str] = ..., seen_unlinks: _Optional[str] = ...) -> None: ...

class AccessLease(_message.Message):
    __slots__ = ("seq", "revision", "lease_seconds", "leader", "term", "unlinks")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    UNLINKS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    revision: str
    lease_seconds: float
    leader: str
    term: int
    unlinks: str
    def __init__(self, seq: _Optional[int] = ..., revision: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., leader: _Optional[str] = ..., term: _Optional[int] = ..., unlinks: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node_id", "raft_address", "leader_raft_address", "is_leader", "raft_commit_index", "raft_last_applied", "chunk_count", "chunk_bytes", "extra", "disk_capacity_bytes", "disk_used_bytes", "disk_free_bytes", "disk_reserve_bytes", "disk_full")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEADER_RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    RAFT_COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    RAFT_LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    DISK_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_RESERVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FULL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    raft_address: str
    leader_raft_address: str
    is_leader: bool
    raft_commit_index: int
    raft_last_applied: int
    chunk_count: int
    chunk_bytes: int
    extra: bytes
    disk_capacity_bytes: int
    disk_used_bytes: int
    disk_free_bytes: int
    disk_reserve_bytes: int
    disk_full: bool
    def __init__(self, node_id: _Optional[str] = ..., raft_address: _Optional[str] = ..., leader_raft_address: _Optional[str] = ..., is_leader: _Optional[bool] = ..., raft_commit_index: _Optional[int] = ..., raft_last_applied: _Optional[int] = ..., chunk_count: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., extra: _Optional[bytes] = ..., disk_capacity_bytes: _Optional[int] = ..., disk_used_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., disk_reserve_bytes: _Optional[int] = ..., disk_full: _Optional[bool] = ...) -> None: ...

class TriggerRequest(_message.Message):
    __slots__ = ("role", "wait")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    role: str
    wait: bool
    def __init__(self, role: _Optional[str] = ..., wait: _Optional[bool] = ...) -> None: ...

class TriggerReply(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: bytes
    def __init__(self, progress: _Optional[bytes] = ...) -> None: ...

class MemberRequest(_message.Message):
    __slots__ = ("id", "grpc", "raft", "state", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    grpc: str
    raft: str
    state: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., grpc: _Optional[str] = ..., raft: _Optional[str] = ..., state: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class MemberReply(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: bytes
    def __init__(self, members: _Optional[bytes] = ...) -> None: ...
