"""``descriptorctl`` (docs/client.md, descriptorctl) against the real server, as a user runs it.

Each verb runs as ``python -m descriptor_client.cli`` (what the ``descriptorctl`` entry
point calls) in a subprocess; the exit status is checked against the documented table:
0 ok, 1 not found, 2 bad input, 3 unavailable, 4 denied, 5 other.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers.fifo_support import make_fifo, open_writer
from helpers.support import (
    A256,
    OCT,
    REPO,
    Layout,
    ServerProcess,
    base_config,
    refused_port,
    running_server,
    wait_for,
)

SERVICE = "descriptor.v1.BlobDescriptorService"
MAXBATCH = 5  # small, so that batch must split its input to fit


def ctl(
    target: str, *args: str, stdin: str = "", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    environ["DESCRIPTOR_TARGET"] = target
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "descriptor_client.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Layout]]:
    """One server for the module: deletion on, a small batch limit."""
    tmp = tmp_path_factory.mktemp("cli")
    layout = Layout(tmp / "registry")
    layout.root.mkdir()
    with running_server(base_config(layout.root, maxbatch=MAXBATCH), tmp) as server:
        yield server, layout


def test_set_then_stat_round_trips(shared: tuple[ServerProcess, Layout]) -> None:
    server, _ = shared
    digest = "sha256:" + hashlib.sha256(b"set by descriptorctl").hexdigest()
    media = "application/vnd.example.config+json"
    done = ctl(server.target, "set", digest, "--media-type", media, "--size", "42", "--repository", REPO)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")

    done = ctl(server.target, "stat", digest, "--repository", REPO, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"digest": digest, "mediaType": media, "size": 42}

    done = ctl(server.target, "--json", "stat", digest)  # --json before the verb too
    assert json.loads(done.stdout) == {"digest": digest, "mediaType": media, "size": 42}

    done = ctl(server.target, "stat", digest)
    assert (done.returncode, done.stdout) == (0, f"{digest}\t{media}\t42\n")


def test_target_flag_wins_over_environment(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digest = layout.put_blob(b"found via --target")
    with refused_port() as port:
        dead = f"127.0.0.1:{port}"
        assert ctl(dead, "stat", digest).returncode == 3
        done = ctl(dead, "--target", server.target, "stat", digest)
    assert (done.returncode, done.stdout) == (0, f"{digest}\t{OCT}\t{len(b'found via --target')}\n")


def test_not_found_and_bad_input_exit_codes(shared: tuple[ServerProcess, Layout]) -> None:
    server, _ = shared
    done = ctl(server.target, "stat", A256)
    assert (done.returncode, done.stdout) == (1, "")
    assert "BLOB_UNKNOWN" in done.stderr

    done = ctl(server.target, "stat", A256, "--json")
    assert done.returncode == 1
    assert json.loads(done.stderr)["error"]["reason"] == "BLOB_UNKNOWN"

    done = ctl(server.target, "stat", "sha256")
    assert done.returncode == 2
    assert "DIGEST_INVALID_FORMAT" in done.stderr

    done = ctl(server.target, "stat", A256, "--repository", "Foo/Bar")
    assert done.returncode == 2
    assert "REPOSITORY_NAME_INVALID" in done.stderr

    done = ctl(server.target, "set", A256, "--media-type", OCT, "--size", "-1")
    assert done.returncode == 2
    assert "DESCRIPTOR_INVALID" in done.stderr

    for usage in (["stat"], ["set", A256, "--size", "ten", "--media-type", OCT], ["frobnicate"], []):
        done = ctl(server.target, *usage)
        assert done.returncode == 2, usage
        assert "usage:" in done.stderr


def test_unavailable_exit_code(tmp_path: Path) -> None:
    with refused_port() as port:
        done = ctl(f"127.0.0.1:{port}", "--timeout", "5", "stat", A256)
    assert done.returncode == 3
    assert "UNAVAILABLE" in done.stderr


def test_clear(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digest = layout.push(REPO, b"cleared by descriptorctl")
    assert ctl(server.target, "stat", digest, "-r", REPO).returncode == 0
    done = ctl(server.target, "clear", digest, "-r", REPO)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not layout.link(REPO, digest).exists()
    assert ctl(server.target, "stat", digest, "-r", REPO).returncode == 1
    assert ctl(server.target, "clear", digest, "-r", REPO).returncode == 1


def test_revalidate(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digest = layout.push(REPO, b"revalidated by descriptorctl")
    done = ctl(server.target, "revalidate", digest, "-r", REPO, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"digest": digest, "mediaType": OCT, "size": 28}
    layout.link(REPO, digest).unlink()  # gone behind the service's back
    assert ctl(server.target, "stat", digest, "-r", REPO).returncode == 0  # still cached
    done = ctl(server.target, "revalidate", digest, "--repository", REPO)
    assert done.returncode == 1
    assert "BLOB_UNKNOWN" in done.stderr
    assert ctl(server.target, "stat", digest, "-r", REPO).returncode == 1
    assert ctl(server.target, "revalidate", "sha384:abc").returncode == 2


def test_clear_when_deletion_is_disabled(tmp_path: Path, layout: Layout) -> None:
    digest = layout.push(REPO, b"kept")
    with running_server(base_config(layout.root, delete=False), tmp_path) as server:
        done = ctl(server.target, "clear", digest, "-r", REPO)
    assert done.returncode == 5
    assert "UNSUPPORTED" in done.stderr
    assert layout.link(REPO, digest).exists()


def test_batch_from_arguments(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    known = layout.push(REPO, b"batch member")
    size = len(b"batch member")

    done = ctl(server.target, "batch", known, "-r", REPO)
    assert (done.returncode, done.stdout) == (0, f"{known}\t{OCT}\t{size}\n")

    done = ctl(server.target, "batch", known, A256, "-r", REPO)
    assert done.returncode == 1  # the worst item: not found
    lines = done.stdout.splitlines()
    assert lines[0] == f"{known}\t{OCT}\t{size}"
    assert lines[1].startswith(f"{A256}\terror\tBLOB_UNKNOWN")

    done = ctl(server.target, "batch", known, A256, "bogus", "--json")
    assert done.returncode == 2  # an invalid digest is worse than an unknown one
    items = [json.loads(line) for line in done.stdout.splitlines()]
    assert items[0] == {"digest": known, "descriptor": {"digest": known, "mediaType": OCT, "size": size}}
    assert (items[1]["digest"], items[1]["error"]["reason"]) == (A256, "BLOB_UNKNOWN")
    assert (items[2]["digest"], items[2]["error"]["code"]) == ("bogus", "INVALID_ARGUMENT")


def test_batch_from_stdin_larger_than_the_server_limit(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digests = [layout.put_blob(f"stdin blob {i}".encode()) for i in range(3 * MAXBATCH + 2)]
    stdin = "\n".join(digests) + "\n\n"
    done = ctl(server.target, "batch", stdin=stdin)  # default chunk 500 > grpc.maxbatch 5
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{d}\t{OCT}\t{len(f'stdin blob {i}')}" for i, d in enumerate(digests)]
    assert done.stderr == ""  # stderr is not a terminal: no progress bar


def test_progress_bar_on_a_terminal(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digests = [layout.put_blob(f"tty blob {i}".encode()) for i in range(12)]
    master, slave = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "descriptor_client.cli", "--target", server.target, "batch", "--chunk", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=environ,
        text=True,
    )
    os.close(slave)
    try:
        out, _ = proc.communicate("\n".join(digests) + "\n", timeout=60)
        terminal = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError as err:  # EIO: the other side is closed and drained
                if err.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert len(out.splitlines()) == 12
    text = terminal.decode()
    assert "3 answered" in text  # batch streams: a running count, no total
    assert "9 answered" in text
    assert text.endswith("\r\x1b[K")  # the line is wiped at the end


def test_metrics(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digest = layout.put_blob(b"counted")
    before = json.loads(ctl(server.target, "metrics", "--json").stdout)
    assert ctl(server.target, "stat", digest).returncode == 0  # miss
    assert ctl(server.target, "stat", digest).returncode == 0  # hit
    done = ctl(server.target, "metrics")
    assert done.returncode == 0
    *counters, worker = done.stdout.splitlines()
    assert worker == "worker\tthe whole server"
    after = {name: int(value) for name, value in (line.split("\t") for line in counters)}
    assert after == {
        "requests": before["requests"] + 2,
        "hits": before["hits"] + 1,
        "misses": before["misses"] + 1,
        "errors": before["errors"],
    }


def test_health(shared: tuple[ServerProcess, Layout], tmp_path: Path) -> None:
    server, _ = shared
    done = ctl(server.target, "health")
    assert (done.returncode, done.stdout) == (0, "SERVING\n")
    done = ctl(server.target, "health", "--service", "", "--json")
    assert json.loads(done.stdout) == {"service": "", "status": "SERVING"}
    assert ctl(server.target, "health", "--service", "no.such.Service").returncode == 1

    # A server whose storage root is missing: the process serves, the service does not.
    with running_server(base_config(tmp_path / "missing"), tmp_path) as broken:
        done = ctl(broken.target, "--json", "health")
        assert done.returncode == 3
        assert json.loads(done.stdout) == {"service": SERVICE, "status": "NOT_SERVING"}
        assert ctl(broken.target, "health", "--service", "").returncode == 0


def test_health_of_a_draining_server_is_not_serving(tmp_path: Path, layout: Layout) -> None:
    """Asked of the server itself, not turned into UNAVAILABLE by the channel's health watch."""
    digest = layout.put_blob(b"held across the drain")
    fifo = make_fifo(layout.link(REPO, digest))
    with running_server(base_config(layout.root, drain="30s"), tmp_path) as server:
        held = subprocess.Popen(
            [sys.executable, "-m", "descriptor_client.cli", "--target", server.target, "stat", digest, "-r", REPO],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        writer = open_writer(fifo, timeout=30)  # the held Stat keeps the drain going
        try:
            assert writer is not None, "the held call never reached the backend"
            server.signal()
            wait_for(lambda: "draining" in server.output, timeout=20)
            done = ctl(server.target, "--json", "health", "--service", "")
            assert (done.returncode, json.loads(done.stdout)) == (3, {"service": "", "status": "NOT_SERVING"})
        finally:
            if writer is not None:
                os.write(writer, digest.encode())
                os.close(writer)
            held.wait(30)


def test_denied_exit_code(tmp_path: Path, layout: Layout) -> None:
    digest = layout.put_blob(b"guarded")
    config = base_config(layout.root)
    config["auth"] = {"tokens": [{"name": "reader", "scope": "read", "sha256": hashlib.sha256(b"rtok").hexdigest()}]}
    with running_server(config, tmp_path) as server:
        assert ctl(server.target, "stat", digest).returncode == 4  # no token: UNAUTHENTICATED
        assert ctl(server.target, "--token", "wrong", "stat", digest).returncode == 4
        assert ctl(server.target, "--token", "rtok", "stat", digest).returncode == 0
        done = ctl(server.target, "set", digest, "--media-type", OCT, "--size", "7", env={"DESCRIPTOR_TOKEN": "rtok"})
        assert done.returncode == 4  # a read token may not write: PERMISSION_DENIED
        assert "PERMISSION_DENIED" in done.stderr
        assert ctl(server.target, "stat", digest, env={"DESCRIPTOR_TOKEN": "rtok"}).returncode == 0


def test_entry_point_is_installed() -> None:
    script = Path(sys.executable).with_name("descriptorctl")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: descriptorctl")
    for verb in ("stat", "set", "clear", "batch", "metrics", "health"):
        assert verb in done.stdout


def test_version() -> None:
    from importlib.metadata import version

    done = ctl("127.0.0.1:1", "--version")
    assert (done.returncode, done.stdout) == (0, f"descriptorctl {version('descriptor-client')}\n")


def test_connection_options_before_or_after_the_verb(shared: tuple[ServerProcess, Layout], tmp_path: Path) -> None:
    server, layout = shared
    digest = layout.put_blob(b"options anywhere")
    with refused_port() as port:
        nobody = f"127.0.0.1:{port}"
        # The environment points nowhere: only the --target given on the command line reaches the server.
        for args in (
            ("stat", digest, "--target", server.target),
            ("--target", server.target, "stat", digest),
            ("--target", nobody, "stat", digest, "--target", server.target),  # after the verb wins
        ):
            done = ctl(nobody, *args)
            assert (done.returncode, done.stdout) == (0, f"{digest}\t{OCT}\t{len(b'options anywhere')}\n"), args
        done = ctl(nobody, "stat", digest, "--target", nobody, "--timeout", "0.5")
        assert done.returncode == 3
        done = ctl(server.target, "metrics", "--json", "--timeout", "5")
        assert set(json.loads(done.stdout)) == {"requests", "hits", "misses", "errors", "worker", "workers"}
        done = ctl(server.target, "stat", "bogus", "--json")
        assert json.loads(done.stderr)["error"]["reason"] == "DIGEST_INVALID_FORMAT"
        missing = str(tmp_path / "missing-ca.pem")
        done = ctl(server.target, "health", "--tls-ca", missing)  # read after the verb too
        assert done.returncode == 2
        assert "missing-ca.pem" in done.stderr


def test_health_of_an_unknown_service(shared: tuple[ServerProcess, Layout]) -> None:
    server, _ = shared
    done = ctl(server.target, "health", "--service", "foo")
    assert (done.returncode, done.stdout) == (1, "SERVICE_UNKNOWN\n")
    assert done.stderr == "descriptorctl: service 'foo' is unknown to the server\n"
    done = ctl(server.target, "--json", "health", "--service", "foo")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"service": "foo", "status": "SERVICE_UNKNOWN"}


class LineReader:
    """The stdout lines of a process as they come (a thread reads them into a queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        stream = proc.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def line(self, timeout: float = 30.0) -> str:
        """The next line, or fail if none comes within ``timeout``."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no output line while stdin is still open") from None


def test_batch_answers_stdin_lines_as_they_come(shared: tuple[ServerProcess, Layout]) -> None:
    """Each digest is answered while stdin is still open, and the chunk limit still holds."""
    server, layout = shared
    digests = [layout.put_blob(f"streamed {i}".encode()) for i in range(4)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "descriptor_client.cli", "batch", "--target", server.target, "--chunk", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None
    out = LineReader(proc)
    try:
        proc.stdin.write(digests[0] + "\n")
        proc.stdin.flush()
        assert out.line().startswith(digests[0] + "\t")  # sent after a short idle, stdin open
        proc.stdin.write("\n".join(digests[1:]) + "\nbogus\n")  # 4 lines at once: chunks of 2
        proc.stdin.flush()
        lines = [out.line() for _ in range(4)]
        assert [line.split("\t")[0] for line in lines] == [*digests[1:], "bogus"]
        assert lines[-1].startswith("bogus\terror\tDIGEST_INVALID_FORMAT")
        proc.stdin.close()
        assert proc.wait(30) == 2  # the worst item: an invalid digest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_batch_chunks_follow_the_server_limit_while_streaming(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digests = [layout.put_blob(f"chunked {i}".encode()) for i in range(2 * MAXBATCH + 1)]
    done = ctl(server.target, "batch", "--chunk", str(4 * MAXBATCH), stdin="\n".join(digests) + "\n")
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == digests


def test_metrics_say_which_worker_answered(tmp_path: Path, layout: Layout) -> None:
    """With --workers each worker answers with its own counters: the output says whose."""
    config = base_config(layout.root, delete=False, workers=2)
    with running_server(config, tmp_path) as server:
        seen: set[int] = set()

        def both_answered() -> bool:
            done = ctl(server.target, "metrics", "--json")
            answer = json.loads(done.stdout)
            assert answer["workers"] == 2
            seen.add(answer["worker"])
            return len(seen) == 2

        wait_for(both_answered, timeout=30)  # each run is a new connection: the kernel spreads them
        text = ctl(server.target, "metrics").stdout.splitlines()[-1]
        assert text in ("worker\t0 of 2", "worker\t1 of 2")


def test_timeout_zero_means_no_deadline(shared: tuple[ServerProcess, Layout]) -> None:
    server, layout = shared
    digest = layout.put_blob(b"no deadline")
    done = ctl(server.target, "--timeout", "0", "stat", digest)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(digest)
    bad = ctl(server.target, "stat", digest, "--timeout", "-1")
    assert bad.returncode == 2
    assert "--timeout" in bad.stderr


@pytest.mark.parametrize(
    ("verb", "words"),
    [
        ("stat", "tabs"),
        ("set", "never to its storage"),
        ("clear", "deletion enabled"),
        ("batch", "--chunk"),
        ("metrics", "which worker answered"),
        ("health", "NOT_SERVING"),
    ],
)
def test_each_verb_explains_itself(verb: str, words: str) -> None:
    done = ctl("127.0.0.1:1", verb, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: descriptorctl {verb}")
    text = " ".join(done.stdout.split())
    assert words in text
    assert "exit status" in text


def test_python_m_descriptor_client_is_descriptorctl(shared: tuple[ServerProcess, Layout]) -> None:
    server, _ = shared
    done = subprocess.run(
        [sys.executable, "-m", "descriptor_client", "--target", server.target, "health"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "SERVING\n")


def test_dev_refuses_an_unknown_command() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [str(root / "dev"), "nonsense"], capture_output=True, text=True, timeout=60, check=False, cwd=root
    )
    assert done.returncode == 2
    assert "unknown command: nonsense" in done.stderr
    helped = subprocess.run([str(root / "dev"), "help"], capture_output=True, text=True, timeout=60, check=False)
    assert helped.returncode == 0
    assert "./dev test" in helped.stdout
