"""``BoundedBackend``: a deadline, a bounded number of backend calls in flight, a bounded
queue, and shedding with BACKEND_UNAVAILABLE beyond it.

A hung storage mount is held for real: repository link files that are FIFOs, whose
read blocks a thread of the filesystem backend's pool until a writer opens them (as
a stuck NFS mount blocks it). Everything else is real: the filesystem backend over
distribution's layout, the statter, the in-memory cache.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest
from descriptor_client import BackendUnavailableError, Descriptor
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.config import from_dict
from descriptor_server.core.statter import CachedBlobStatter
from descriptor_server.wrappers.bounds import BoundedBackend, bounded
from helpers.fifo_support import make_fifo, release
from helpers.support import OCT, REPO, Layout, digest_of


def readers(fifos: list[Path]) -> list[Path]:
    """The FIFOs a backend thread has open for reading now (blocked on the hung 'mount')."""
    held = []
    for path in fifos:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: no reader
                raise
            continue
        os.close(fd)  # closing without writing: the reader sees an empty link (corrupt)
        held.append(path)
    return held


@pytest.fixture
def hung(tmp_path: Path) -> tuple[Layout, list[str], list[Path]]:
    layout = Layout(tmp_path)
    digests = [digest_of(f"hung {i}".encode()) for i in range(300)]
    fifos = [make_fifo(layout.link(REPO, d)) for d in digests]
    return layout, digests, fifos


async def test_a_hung_backend_sheds_beyond_the_queue_and_runs_nothing_abandoned(
    hung: tuple[Layout, list[str], list[Path]],
) -> None:
    layout, digests, fifos = hung
    fs = FilesystemBackend(str(layout.root), max_workers=8)
    backend = BoundedBackend(fs, timeout=0.5, max_inflight=4, max_pending=8)
    statter = CachedBlobStatter(InMemoryCache(1000), backend)
    try:
        results = await asyncio.gather(*(statter.stat(d, REPO) for d in digests), return_exceptions=True)
        assert all(isinstance(r, BackendUnavailableError) for r in results)
        messages = [r.message for r in results if isinstance(r, BackendUnavailableError)]
        assert sum("overloaded" in m for m in messages) == 288  # refused at once
        assert sum("timed out" in m for m in messages) == 12  # 4 in flight, 8 queued
        assert (backend.shed_total, backend.timeouts_total) == (288, 12)
        # At most max_inflight reads ever reached the pool: 4 threads blocked, the rest never queued.
        await asyncio.sleep(0.2)
        assert (backend.inflight, backend.pending) == (4, 0)
        assert len(readers(fifos)) == 4  # (this also lets those 4 reads finish: an empty link)
        for _ in range(100):
            if not backend.inflight:
                break
            await asyncio.sleep(0.02)
        assert backend.inflight == 0
        # The mount "came back": nothing abandoned runs now; no thread opens another FIFO.
        await asyncio.sleep(0.3)
        assert readers(fifos) == []
        # And the backend serves again.
        ok = layout.push("team/ok", b"served after the hang")
        assert (await statter.stat(ok, "team/ok")) == Descriptor(OCT, ok, len(b"served after the hang"))
    finally:
        await statter.close()


async def test_a_slow_call_within_the_deadline_answers_and_a_queued_one_gets_the_slot(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    held = digest_of(b"held")
    fifo = make_fifo(layout.link(REPO, held))
    layout.put_blob(b"held")
    other = layout.push(REPO, b"queued behind")
    backend = BoundedBackend(FilesystemBackend(str(layout.root)), timeout=10, max_inflight=1, max_pending=1)
    try:
        first = asyncio.ensure_future(backend.stat(held, REPO))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(backend.stat(other, REPO))
        await asyncio.sleep(0.05)
        assert (backend.inflight, backend.pending) == (1, 1)
        with pytest.raises(BackendUnavailableError):
            await backend.stat(other, REPO)  # the queue is full: refused at once
        assert backend.shed_total == 1
        releaser = threading.Thread(target=release, args=(fifo, held))
        releaser.start()
        assert (await first).digest == held
        assert (await second).digest == other
        releaser.join()
        assert (backend.inflight, backend.pending, backend.timeouts_total) == (0, 0, 0)
    finally:
        await backend.close()


async def test_a_caller_that_gives_up_frees_its_queue_place(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    held = digest_of(b"held")
    fifo = make_fifo(layout.link(REPO, held))
    backend = BoundedBackend(FilesystemBackend(str(layout.root)), timeout=0, max_inflight=1, max_pending=1)
    try:
        first = asyncio.ensure_future(backend.stat(held, REPO))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(backend.stat(digest_of(b"x"), REPO))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert backend.pending == 0
        releaser = threading.Thread(target=release, args=(fifo, "not a digest"))
        releaser.start()
        with pytest.raises(BackendUnavailableError):  # a corrupt link
            await first
        releaser.join()
        assert backend.inflight == 0
    finally:
        await backend.close()


def test_bounded_follows_the_configuration(tmp_path: Path) -> None:
    fs = FilesystemBackend(str(tmp_path))
    config = from_dict({"storage": {"backendtimeout": "2s", "maxinflight": 3, "maxpending": 5}})
    from descriptor_server.wrappers.bounds import from_config

    wrapped = from_config(fs, config.storage)
    assert isinstance(wrapped, BoundedBackend)
    assert (wrapped.timeout, wrapped.max_inflight, wrapped.max_pending) == (2.0, 3, 5)
    assert bounded(fs, timeout=0, max_inflight=0, max_pending=9) is fs  # nothing to bound
    assert from_config(fs, from_dict({}).storage) is not fs  # bounded by default


async def test_the_probe_has_the_deadline_takes_no_slot_and_never_runs_twice() -> None:
    # Fault injection: a socket that accepts connections but never answers (no real
    # registry hangs on demand); the registry backend's own timeout is far longer.
    import socket

    from descriptor_server.backends.registry import RegistryBackend

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        registry = RegistryBackend(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=30)
        backend = bounded(registry, timeout=0.3, max_inflight=1, max_pending=0)
        assert isinstance(backend, BoundedBackend)
        try:
            with pytest.raises(BackendUnavailableError) as info:
                await backend.probe()
            assert "timed out after 0.3s" in info.value.message
            with pytest.raises(BackendUnavailableError) as info:
                await backend.probe()  # the first is still in the backend: not a second one
            assert "still unanswered" in info.value.message
            assert (backend.inflight, backend.timeouts_total) == (0, 1)  # no slot taken
        finally:
            await backend.close()
