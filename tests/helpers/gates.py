"""A backend held at gates: the one fault a real backend cannot produce on demand.

:class:`GatedBackend` wraps any real backend; its reads and its deletes each wait at a
gate of their own until the test opens it, so that a Stat and a Clear overlap exactly
as the test says.
"""

from __future__ import annotations

import asyncio

from descriptor_client.descriptor import Descriptor
from descriptor_server.backends import Backend


class Gate:
    """Calls wait here until :meth:`open`; ``arrived`` counts the calls that reached it."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.arrived = 0
        self._arrival = asyncio.Event()

    def hold(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def passing(self) -> None:
        self.arrived += 1
        self._arrival.set()
        await self._open.wait()

    async def reached(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` calls have reached the gate."""
        async with asyncio.timeout(timeout):
            while self.arrived < count:
                self._arrival.clear()
                await self._arrival.wait()


class GatedBackend:
    """``inner`` with a gate after each read (the answer is read first, then held) and
    before each delete."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.reads = Gate()
        self.deletes = Gate()
        self.fail_delete: Exception | None = None

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        try:
            answer = await self.inner.stat(digest, repository)
        finally:
            await self.reads.passing()
        return answer

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await self.inner.set_descriptor(digest, descriptor, repository)

    async def clear(self, digest: str, repository: str = "") -> None:
        await self.deletes.passing()
        if self.fail_delete is not None:
            raise self.fail_delete
        await self.inner.clear(digest, repository)

    def supports_clear(self, repository: str) -> bool:
        return self.inner.supports_clear(repository)

    async def probe(self) -> None:
        await self.inner.probe()

    async def close(self) -> None:
        await self.inner.close()
