from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Descriptor(_message.Message):
    __slots__ = ("media_type", "digest", "size")
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    media_type: str
    digest: str
    size: int
    def __init__(self, media_type: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("digest", "repository")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    digest: str
    repository: str
    def __init__(self, digest: _Optional[str] = ..., repository: _Optional[str] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("descriptor",)
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    descriptor: Descriptor
    def __init__(self, descriptor: _Optional[_Union[Descriptor, _Mapping]] = ...) -> None: ...

class SetDescriptorRequest(_message.Message):
    __slots__ = ("digest", "descriptor", "repository")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    digest: str
    descriptor: Descriptor
    repository: str
    def __init__(self, digest: _Optional[str] = ..., descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., repository: _Optional[str] = ...) -> None: ...

class SetDescriptorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearRequest(_message.Message):
    __slots__ = ("digest", "repository")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    digest: str
    repository: str
    def __init__(self, digest: _Optional[str] = ..., repository: _Optional[str] = ...) -> None: ...

class ClearResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BatchStatRequest(_message.Message):
    __slots__ = ("digests", "repository")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    repository: str
    def __init__(self, digests: _Optional[_Iterable[str]] = ..., repository: _Optional[str] = ...) -> None: ...

class BatchStatResult(_message.Message):
    __slots__ = ("digest", "descriptor", "status")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    descriptor: Descriptor
    status: _status_pb2.Status
    def __init__(self, digest: _Optional[str] = ..., descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class BatchStatResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchStatResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchStatResult, _Mapping]]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("requests", "hits", "misses", "errors", "worker", "workers")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    hits: int
    misses: int
    errors: int
    worker: int
    workers: int
    def __init__(self, requests: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., errors: _Optional[int] = ..., worker: _Optional[int] = ..., workers: _Optional[int] = ...) -> None: ...

class RevalidateRequest(_message.Message):
    __slots__ = ("digest", "repository")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    digest: str
    repository: str
    def __init__(self, digest: _Optional[str] = ..., repository: _Optional[str] = ...) -> None: ...

class RevalidateResponse(_message.Message):
    __slots__ = ("descriptor",)
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    descriptor: Descriptor
    def __init__(self, descriptor: _Optional[_Union[Descriptor, _Mapping]] = ...) -> None: ...
