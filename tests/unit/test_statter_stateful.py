"""Hypothesis drives the statter (in-memory cache, a real filesystem layout in a tmp dir)
through interleavings of pushes, Stats held mid-read, Clears and SetDescriptors, and
checks every answer against storage: a Stat answers *present* only if its scope held the
blob at some instant while the Stat ran. Since Clear is the only deletion here, this is
"Clear is final" (a Stat begun after a Clear returned never answers the blob until it is
pushed again): no stale answer from a raced write-back, a joined read, or a SetDescriptor
begun before the Clear. (The other direction is not the guarantee: a Stat that joins a
read begun before a push may answer unknown; a registry announces a push with
SetDescriptor, which writes the cache.)
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from descriptor_client import BlobUnknownError, Descriptor
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.core.statter import CachedBlobStatter
from helpers.support import OCT, Layout, digest_of
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

CONTENTS = (b"blob one", b"blob two")
SCOPES = ("", "team/a", "team/b")


class HeldBackend:
    """The real filesystem backend, read in the loop's thread (so interleavings are the
    test's), each Stat's answer held at a gate of its own until the test releases it."""

    def __init__(self, fs: FilesystemBackend) -> None:
        self.fs = fs
        self.gates: list[asyncio.Future[None]] = []

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        try:
            answer = self.fs._stat(digest, repository)
        finally:
            gate = asyncio.get_running_loop().create_future()
            self.gates.append(gate)
            await gate
        return answer

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        return None

    async def clear(self, digest: str, repository: str = "") -> None:
        self.fs._clear(digest, repository)

    def supports_clear(self, repository: str) -> bool:
        return True

    async def probe(self) -> None:
        return None

    async def close(self) -> None:
        await self.fs.close()


class ClearIsFinal(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.layout = Layout(Path(self.tmp.name))
        self.loop = asyncio.new_event_loop()
        self.backend = HeldBackend(FilesystemBackend(self.tmp.name))
        self.statter = CachedBlobStatter(InMemoryCache(100), self.backend, delete_enabled=True)
        self.step = 0
        self.history: dict[tuple[int, str], list[bool]] = {}  # presence after each step
        self.cleared: set[int] = set()
        self.pending: list[tuple[asyncio.Future[Descriptor], int, int, str]] = []
        self._sample()

    def _present(self, k: int, scope: str) -> bool:
        digest = digest_of(CONTENTS[k])
        if not self.layout.blob_data(digest).exists():
            return False
        return not scope or self.layout.link(scope, digest).exists()

    def _sample(self) -> None:
        for k in range(len(CONTENTS)):
            for scope in SCOPES:
                self.history.setdefault((k, scope), []).append(self._present(k, scope))

    def _run(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _settle(self) -> None:
        """Check every Stat that finished against storage while it ran."""
        self._run()
        still = []
        for task, start, k, scope in self.pending:
            if not task.done():
                still.append((task, start, k, scope))
                continue
            seen = self.history[(k, scope)][start:]
            err = task.exception()
            if err is None:
                assert any(seen), f"Stat of blob {k} in {scope!r} answered a blob absent all along"
            else:
                assert isinstance(err, BlobUnknownError), err
        self.pending = still

    def teardown(self) -> None:
        for gate in self.backend.gates:
            if not gate.done():
                gate.set_result(None)
        self._run()
        for task, *_ in self.pending:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: answers after the last check are not checked
        self.loop.run_until_complete(self.statter.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(k=st.integers(0, 1), scope=st.sampled_from(SCOPES[1:]))
    def push(self, k: int, scope: str) -> None:
        self.layout.push(scope, CONTENTS[k])

    @rule(k=st.integers(0, 1), scope=st.sampled_from(SCOPES))
    def start_stat(self, k: int, scope: str) -> None:
        task = self.loop.create_task(self.statter.stat(digest_of(CONTENTS[k]), scope))
        self.pending.append((task, len(self.history[(k, scope)]) - 1, k, scope))

    @precondition(lambda self: any(not g.done() for g in self.backend.gates))
    @rule(i=st.integers(0, 7))
    def release(self, i: int) -> None:
        held = [g for g in self.backend.gates if not g.done()]
        held[i % len(held)].set_result(None)

    @rule(k=st.integers(0, 1), scope=st.sampled_from(SCOPES))
    def clear(self, k: int, scope: str) -> None:
        clear = self.loop.create_task(self.statter.clear(digest_of(CONTENTS[k]), scope))
        self._run()
        for gate in self.backend.gates:  # a repository Clear may read first; let reads through
            if not clear.done() and not gate.done():
                gate.set_result(None)
                self._run()
        assert clear.done()
        err = clear.exception()
        assert err is None or isinstance(err, BlobUnknownError), err
        if err is None:
            self.cleared.add(k)  # fenced: a late SetDescriptor of it is checked

    @rule(k=st.integers(0, 1), scope=st.sampled_from(SCOPES))
    def set_descriptor(self, k: int, scope: str) -> None:
        """As a registry does: after its push, or late (its commit raced its own delete)."""
        if not self._present(k, scope) and k not in self.cleared:
            return
        digest = digest_of(CONTENTS[k])
        setting = self.loop.create_task(
            self.statter.set_descriptor(digest, Descriptor(OCT, digest, len(CONTENTS[k])), scope)
        )
        self._run()
        for gate in self.backend.gates:  # its backend check, when fenced
            if not setting.done() and not gate.done():
                gate.set_result(None)
                self._run()
        assert setting.done()
        setting.result()

    @invariant()
    def answers_match_storage(self) -> None:
        self._sample()
        self._settle()


ClearIsFinal.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_clear_is_final_against_storage = ClearIsFinal.TestCase
