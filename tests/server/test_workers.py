"""``--workers N`` / ``grpc.workers``: N processes sharing one port, started as a user would."""

from __future__ import annotations

import signal
from pathlib import Path

from descriptor_client import Descriptor, DescriptorClient
from helpers.support import OCT, Layout, ServerProcess, base_config, run_server_command, running_server, wait_for


def test_workers_share_the_port_and_drain_on_sigterm(tmp_path: Path, layout: Layout) -> None:
    blob = layout.put_blob(b"served by a worker")
    config = base_config(layout.root, delete=False)
    proc = ServerProcess(config, tmp_path)
    proc.args = [*proc.args, "--workers", "2"]
    proc.start()
    try:
        wait_for(lambda: proc.output.count("listening on") == 2)
        ports = {line.rsplit(":", 1)[1].split()[0] for line in proc.lines if "listening on" in line}
        assert ports == {str(proc.port)}
        for _ in range(4):  # several connections: the kernel spreads them over the workers
            with DescriptorClient(proc.target) as client:
                assert client.stat(blob) == Descriptor(OCT, blob, len(b"served by a worker"))
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.output.count("stopped") == 2
    finally:
        proc.stop()


def test_workers_below_one_is_a_config_error(tmp_path: Path, layout: Layout) -> None:
    proc = ServerProcess(base_config(layout.root), tmp_path)
    out = run_server_command([*proc.args, "--workers", "0"], cwd=tmp_path)
    assert out.returncode == 2
    assert "grpc.workers" in out.stderr


def test_workers_refuse_a_bad_backend_section_on_stderr(tmp_path: Path) -> None:
    """As a single process does: the config error goes to stderr, stdout stays clean."""
    config = {"storage": {"registry": {"url": "ftp://registry.internal"}}, "grpc": {"addr": "127.0.0.1:0"}}
    proc = ServerProcess(config, tmp_path)
    out = run_server_command([*proc.args, "--workers", "2"], cwd=tmp_path)
    assert out.returncode == 2
    assert "descriptor-server: config error: storage.registry.url" in out.stderr
    assert out.stdout == ""


def test_workers_with_a_per_worker_cache_and_deletion_are_refused(tmp_path: Path, layout: Layout) -> None:
    """A Clear would reach one worker's in-memory cache only: refused at start, naming the keys."""
    proc = ServerProcess(base_config(layout.root, delete=True), tmp_path)
    out = run_server_command([*proc.args, "--workers", "2"], cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert line.startswith("descriptor-server: config error: grpc.workers:")
    assert "storage.cache.blobdescriptor" in line
    assert "storage.delete.enabled" in line
    for cache in ("none",):  # nothing per worker to disagree about: served
        config = base_config(layout.root, delete=True, cache=cache, workers=2)
        with running_server(config, tmp_path) as server, DescriptorClient(server.target) as client:
            blob = layout.put_blob(b"cleared through one of two workers")
            client.clear(blob)
            assert not layout.blob_data(blob).exists()


def test_a_distribution_2x_config_warns_once_across_workers(tmp_path: Path, layout: Layout) -> None:
    """distribution 2.x's redis.addr and redis.pool are read as 3.x's keys, with one warning."""
    config = {**base_config(layout.root, delete=False), "redis": {"addr": "127.0.0.1:6379", "pool": {"maxactive": 4}}}
    proc = ServerProcess(config, tmp_path)
    proc.args = [*proc.args, "--workers", "2"]
    proc.start()
    try:
        wait_for(lambda: proc.output.count("listening on") == 2)
        assert proc.output.count("distribution 2.x keys") == 1, proc.output
        warning = next(line for line in proc.lines if "distribution 2.x keys" in line)
        assert "WARN" in warning.upper()
        assert "redis.addr -> redis.addrs" in warning
        assert "redis.pool.maxactive -> redis.poolsize" in warning
    finally:
        proc.stop()
