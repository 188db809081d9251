"""grpc.requesttimeout with one timer for every call (:class:`RequestWait`).

The context is a stand-in whose ``read`` waits for the test (a call that has not sent
its request yet): the real server's behaviour is in tests/server/test_hostile.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from descriptor_client import RequestInvalidError
from descriptor_server.rpc.servicer import RequestWait


class Call:
    """A call whose request arrives when the test says (never, unless it does)."""

    def __init__(self) -> None:
        self.request: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def read(self) -> bytes:
        return await self.request


async def test_a_call_without_its_request_ends_after_the_timeout_and_others_are_served() -> None:
    wait = RequestWait(0.2)
    silent, served = Call(), Call()
    start = time.monotonic()
    silent_read = asyncio.ensure_future(wait.read(silent))  # type: ignore[arg-type]
    served_read = asyncio.ensure_future(wait.read(served))  # type: ignore[arg-type]
    served.request.set_result(b"request")
    assert await served_read == b"request"
    with pytest.raises(RequestInvalidError, match=r"grpc\.requesttimeout"):
        await silent_read
    assert 0.2 <= time.monotonic() - start < 0.2 * 1.1 + 0.5  # one sweep period late at most (and the loop)
    # Nothing is kept for either call, and no sweep stays scheduled.
    assert (wait._waiting, wait._expired, wait._sweep_at) == ({}, set(), None)


async def test_a_call_cancelled_by_its_client_is_not_reported_as_a_timeout() -> None:
    wait = RequestWait(10)
    read = asyncio.ensure_future(wait.read(Call()))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert (wait._waiting, wait._expired) == ({}, set())


async def test_many_calls_served_leave_nothing_behind() -> None:
    wait = RequestWait(10)
    calls = [Call() for _ in range(100)]
    for call in calls:
        call.request.set_result(b"r")
    assert await asyncio.gather(*(wait.read(c) for c in calls)) == [b"r"] * 100  # type: ignore[arg-type]
    assert (wait._waiting, wait._expired) == ({}, set())
    assert wait._sweep_at is not None  # the one sweep, which finds nothing waiting and stops
    wait._sweep_at.cancel()
