"""``--workers N`` / ``grpc.workers``: N processes sharing one port, started as a user would."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from descriptor_client import Descriptor, DescriptorClient
from helpers.support import (
    OCT,
    Layout,
    ServerProcess,
    base_config,
    run_server_command,
    running_server,
    server_command,
    wait_for,
)


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


#: The bound of each step of an early-signal start (fork, start, exit): a --workers 2 start
#: takes 1 to 7 s on a busy 2-core machine, and far longer when many suites share it.
STEP = 60.0


def _early_signal(tmp_path: Path, layout: Layout, sig: int, delay: float, name: str) -> tuple[int, str, bool]:
    """Start ``--workers 2``, send ``sig`` ``delay`` seconds after spawning, and stop it.

    Returns the exit status, the output, and whether the server was still serving
    after the signal (then stopped with SIGTERM)."""
    workdir = tmp_path / name
    workdir.mkdir()
    proc = ServerProcess(base_config(layout.root, delete=False, drain="5s"), workdir)
    proc.args = [*proc.args, "--workers", "2"]
    proc.proc = subprocess.Popen(
        [*server_command(), *proc.args],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threading.Thread(target=proc._read, daemon=True).start()
    try:
        pid = proc.proc.pid
        if delay < 0:
            # As soon as the command holds its signals (its first statement; before that
            # the interpreter itself is starting).
            with contextlib.suppress(TimeoutError):  # a command that never holds them: from now
                wait_for(lambda: _holds_signals(pid), timeout=1, interval=0.001)
        else:
            # ``delay`` seconds after the workers were forked, while they start.
            wait_for(lambda: bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()), STEP, 0.001)
            time.sleep(delay)  # the moment of start-up under test, not a wait for an event
        proc.proc.send_signal(sig)
        serving = False
        if sig == signal.SIGHUP:
            wait_for(lambda: proc.output.count("listening on") == 2, timeout=STEP)
            with DescriptorClient(f"127.0.0.1:{proc.port}", timeout=10) as client:
                serving = client.health() == "SERVING"
            proc.proc.send_signal(signal.SIGTERM)
        try:
            code = proc.proc.wait(STEP)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit {STEP}s after the signal (delay {delay}):\n{proc.output}") from None
    finally:
        proc.stop()
    return code, proc.output, serving


def _holds_signals(pid: int) -> bool:
    """Whether the process blocks SIGHUP, SIGINT and SIGTERM (``SigBlk`` of /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            held = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}
            mask = int(line.split()[1], 16)
            return all(mask & (1 << (s - 1)) for s in held)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
@pytest.mark.timeout(8 * 3 * STEP)  # eight starts, each step bounded by STEP: a hang fails its step
def test_a_signal_during_start_up_is_handled_as_once_running(tmp_path: Path, layout: Layout, sig: int) -> None:
    """At every moment of a --workers start-up: SIGTERM/SIGINT drain (exit 0), SIGHUP
    reloads and the server keeps serving. Unhandled, it killed the workers (exit 1)."""
    for i, delay in enumerate((-1, 0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)):
        code, output, serving = _early_signal(tmp_path, layout, sig, delay, f"{sig}-{i}")
        assert code == 0, (delay, output)
        assert "Traceback" not in output, (delay, output)
        assert "failed" not in output, (delay, output)
        if sig == signal.SIGHUP:
            assert serving, (delay, output)


def _read_only_tmp(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the server command with /tmp, /var/tmp and its working directory read-only
    (a container's read-only root file system), in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    binds = " && ".join(f"mount --bind -o ro {d} {d}" for d in ("/tmp", "/var/tmp", str(cwd)))
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{binds} && ! touch /tmp/.w 2>/dev/null"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("cannot make /tmp read-only here (unshare -m needs CAP_SYS_ADMIN)")
    command = " ".join(shlex.quote(a) for a in [*server_command(), *args])
    return subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"{binds} && cd {shlex.quote(str(cwd))} && exec {command}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")},
    )


def test_workers_with_metrics_and_no_writable_tmp_is_a_config_error(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root, delete=False)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    proc = ServerProcess(config, tmp_path)
    for args in ([*proc.args, "--workers", "2"], ["--check-config", str(proc.config_path), "--workers", "2"]):
        done = _read_only_tmp(args, tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr  # not 1: systemd would restart it forever
        assert "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("descriptor-server: config error: http.debug.prometheus.enabled:"), line
        assert "TMPDIR" in line


def test_check_config_applies_workers(tmp_path: Path, layout: Layout) -> None:
    """--check-config with --workers refuses what that start would refuse."""
    config = base_config(layout.root, delete=True)  # per-worker in-memory caches and deletion
    proc = ServerProcess(config, tmp_path)
    assert run_server_command(["--check-config", str(proc.config_path)], cwd=tmp_path).returncode == 0
    out = run_server_command(["--check-config", str(proc.config_path), "--workers", "2"], cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "grpc.workers" in out.stderr
    assert "workers: 2" not in out.stdout
    fine = base_config(layout.root, delete=False)
    proc = ServerProcess(fine, tmp_path)
    out = run_server_command(["--check-config", str(proc.config_path), "--workers", "2"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "workers: 2" in out.stdout
