"""The one RPC table: every RPC of the proto has an access rule, a handler and a client verb,
and the sync and asyncio clients offer the same verbs with the same parameters."""

from __future__ import annotations

import inspect

import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    AsyncRepositoryClient,
    DescriptorClient,
    RepositoryClient,
)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client._wire import SERVICE_CONFIG
from descriptor_client.rpcs import RPCS, SERVICE
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.core.statter import CachedBlobStatter
from descriptor_server.rpc.servicer import DescriptorServicer
from descriptor_server.security import METHOD_SCOPES

PROTO_METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["BlobDescriptorService"].methods]


def test_the_table_is_the_proto_service() -> None:
    assert SERVICE == "descriptor.v1.BlobDescriptorService"
    assert list(RPCS) == PROTO_METHODS
    for rpc in RPCS.values():
        assert rpc.request.DESCRIPTOR.full_name == f"descriptor.v1.{rpc.name}Request"
        assert rpc.response.DESCRIPTOR.full_name == f"descriptor.v1.{rpc.name}Response"
        assert rpc.path == f"/descriptor.v1.BlobDescriptorService/{rpc.name}"


@pytest.mark.parametrize("name", PROTO_METHODS)
def test_every_rpc_has_an_access_rule(name: str) -> None:
    assert RPCS[name].access in ("read", "write")
    assert METHOD_SCOPES[name] == RPCS[name].access
    # Changing calls need write; the registry action says which.
    assert (RPCS[name].access == "write") == (RPCS[name].action in ("push", "delete"))


@pytest.mark.parametrize("name", PROTO_METHODS)
def test_every_rpc_has_a_handler(name: str, layout: object) -> None:
    from descriptor_server.backends.filesystem import FilesystemBackend

    servicer = DescriptorServicer(CachedBlobStatter(InMemoryCache(10), FilesystemBackend("/nonexistent")))
    assert name in servicer.handlers()
    assert inspect.iscoroutinefunction(getattr(servicer, RPCS[name].verb))


@pytest.mark.parametrize("name", PROTO_METHODS)
def test_every_rpc_has_a_verb_in_both_clients(name: str) -> None:
    verb = RPCS[name].verb
    assert callable(getattr(DescriptorClient, verb))
    assert inspect.iscoroutinefunction(getattr(AsyncDescriptorClient, verb))


def public_verbs(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name != "close"
    }


@pytest.mark.parametrize(
    ("sync", "aio"), [(DescriptorClient, AsyncDescriptorClient), (RepositoryClient, AsyncRepositoryClient)]
)
def test_sync_and_async_clients_offer_the_same_verbs_and_parameters(sync: type, aio: type) -> None:
    sync_verbs, aio_verbs = public_verbs(sync), public_verbs(aio)
    assert set(sync_verbs) == set(aio_verbs)
    for name, signature in sync_verbs.items():
        other = aio_verbs[name]
        assert list(signature.parameters.values()) == list(other.parameters.values()), name
        if name != "repository":  # the one verb that makes a view rather than a call
            assert inspect.iscoroutinefunction(getattr(aio, name)), name
            assert not inspect.iscoroutinefunction(getattr(sync, name)), name


def test_only_the_idempotent_rpcs_are_retried_by_grpc() -> None:
    import json

    config = json.loads(SERVICE_CONFIG)
    retried = {entry["method"] for entry in config["methodConfig"][0]["name"]}
    assert retried == {"Stat", "BatchStat", "GetMetrics", "Revalidate"}
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_the_channel_watches_each_replicas_health() -> None:
    """Round robin leaves a replica whose server ("") turns NOT_SERVING, as a draining one does."""
    import json

    config = json.loads(SERVICE_CONFIG)
    assert config["healthCheckConfig"] == {"serviceName": ""}
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
