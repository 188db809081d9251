"""The conformance cases of docs/api.md (distribution's cachecheck), against every target."""

from __future__ import annotations

import pytest
from descriptor_client import (
    BlobUnknownError,
    Descriptor,
    DescriptorError,
    DescriptorInvalidError,
    DigestInvalidFormatError,
)
from descriptor_client.protocol import BlobDescriptorService
from helpers.support import A256, A384, OCT, REPO
from helpers.targets import TARGETS


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> BlobDescriptorService:
    svc: BlobDescriptorService = request.getfixturevalue(request.param)
    return svc


async def test_case1_empty_cache_is_blob_unknown(target: BlobDescriptorService) -> None:
    with pytest.raises(BlobUnknownError):
        await target.stat(A384)
    with pytest.raises(BlobUnknownError):
        await target.stat(A384, REPO)


async def test_case2_invalid_input_stores_nothing(target: BlobDescriptorService) -> None:
    with pytest.raises(DigestInvalidFormatError):
        await target.set_descriptor("", Descriptor(OCT, A384, 10), REPO)
    with pytest.raises(DescriptorError) as info:
        await target.set_descriptor(A384, Descriptor(OCT, "", 10), REPO)
    assert isinstance(info.value, DescriptorInvalidError)
    with pytest.raises(BlobUnknownError):
        await target.stat(A384, REPO)
    with pytest.raises(BlobUnknownError):
        await target.stat(A384)


async def test_case3_alias_is_stored_under_both_digests(target: BlobDescriptorService) -> None:
    want = Descriptor(OCT, A256, 10)
    await target.set_descriptor(A384, want, REPO)
    assert await target.stat(A384, REPO) == want
    assert await target.stat(A384) == want
    assert await target.stat(A256) == want


async def test_case4_repository_media_type_overrides_global(target: BlobDescriptorService) -> None:
    await target.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)
    await target.set_descriptor(A384, Descriptor("application/json", A256, 10), REPO)
    assert (await target.stat(A384, REPO)).media_type == "application/json"
    assert (await target.stat(A384)).media_type == OCT


async def test_case5_repository_clear(target: BlobDescriptorService) -> None:
    await target.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)
    assert await target.stat(A384, REPO) == Descriptor(OCT, A256, 10)
    await target.clear(A384, REPO)
    with pytest.raises(BlobUnknownError):
        await target.stat(A384, REPO)
