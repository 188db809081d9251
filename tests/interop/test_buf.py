"""The wire API stays lint-clean and backward compatible: ``buf lint`` and ``buf breaking``.

``buf`` is the npm package ``@bufbuild/buf`` pinned in ``tests/node/package.json``
(``./dev test`` runs ``npm ci`` there). ``buf.yaml`` at the root lints the ``protos``
module with the STANDARD rules (v2's name for DEFAULT) and checks breaking changes
with the FILE rules. The baseline for ``buf breaking`` is the proto of the most
recent ``v*`` tag, or, until a release is tagged, the first commit that added
``protos/descriptor/v1/descriptor.proto``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tests" / "node" / "node_modules" / ".bin" / "buf"
PROTO = "protos/descriptor/v1/descriptor.proto"
MODULE_PATHS = ("buf.yaml", "protos", "third_party/googleapis")


def buf_or_skip() -> Path:
    if not BUF.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, so @bufbuild/buf cannot be (CI has npm)")
        pytest.fail("tests/node/node_modules/.bin/buf is missing: run `npm ci` in tests/node (./dev test does)")
    return BUF


def buf(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf_or_skip()), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60, check=False)


def copy_part(rel: str, dest: Path) -> None:
    src = ROOT / rel
    if src.is_dir():
        shutil.copytree(src, dest / rel, dirs_exist_ok=True)
    else:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def copy_modules(dest: Path) -> Path:
    """The working tree's buf workspace (buf.yaml and both modules) copied to ``dest``."""
    for rel in MODULE_PATHS:
        copy_part(rel, dest)
    return dest


def baseline_rev() -> tuple[str, str]:
    """(revision, why) of the proto to compare against; skips when git cannot tell."""
    if shutil.which("git") is None or git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout: no release baseline to compare the proto against")
    tag = git("describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD")
    if tag.returncode == 0 and tag.stdout.strip():
        name = tag.stdout.strip()
        if git("cat-file", "-e", f"{name}:{PROTO}").returncode == 0:
            return name, f"the most recent release tag {name}"
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip(
            "shallow clone without a v* tag: the commit that first added "
            f"{PROTO} is not in the history (clone with fetch-depth: 0 to run this check)"
        )
    added = git("log", "--diff-filter=A", "--format=%H", "--", PROTO).stdout.split()
    if not added:
        pytest.skip(f"{PROTO} has not been committed yet: no baseline")
    return added[-1], f"commit {added[-1][:12]}, which first added {PROTO} (no v* tag yet)"


def materialize(rev: str, dest: Path) -> Path:
    """The buf workspace as of ``rev`` in ``dest`` (the working tree's for parts ``rev`` lacks)."""
    for rel in MODULE_PATHS:
        listed = git("ls-tree", "-r", "--name-only", rev, "--", rel).stdout.split()
        if not listed:
            copy_part(rel, dest)
            continue
        for path in listed:
            shown = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, timeout=60, check=True
            )
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_bytes(shown.stdout)
    return dest


def edit_proto(workspace: Path, pattern: str, replacement: str) -> None:
    path = workspace / PROTO
    text, n = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.MULTILINE)
    assert n == 1, f"{pattern!r} not found in {PROTO}"
    path.write_text(text)


def test_buf_lint_passes() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_buf_lint_rejects_a_style_violation(tmp_path: Path) -> None:
    """The lint rules bite: a lower-case message name in protos/ fails ``buf lint``."""
    workspace = copy_modules(tmp_path / "ws")
    with (workspace / PROTO).open("a") as f:
        f.write("\nmessage bad_name {}\n")
    result = buf("lint", workspace)
    assert result.returncode != 0
    assert 'Message name "bad_name" should be PascalCase' in result.stdout


def test_buf_breaking_against_the_release_baseline(tmp_path: Path) -> None:
    rev, why = baseline_rev()
    print(f"buf breaking baseline: {why}")
    against = materialize(rev, tmp_path / "baseline")
    assert (against / PROTO).is_file()
    result = buf("breaking", ROOT, "--against", against)
    assert result.returncode == 0, f"breaking change against {why}:\n{result.stdout}{result.stderr}"


def test_buf_breaking_fails_on_a_renumbered_field(tmp_path: Path) -> None:
    """A scratch copy whose Descriptor.size moves from field 3 to 4 breaks the API."""
    scratch = copy_modules(tmp_path / "scratch")
    edit_proto(scratch, r"^(\s*int64 size = )3;", r"\g<1>4;")
    result = buf("breaking", scratch, "--against", ROOT)
    assert result.returncode != 0, result.stdout + result.stderr
    assert 'Previously present field "3" with name "size" on message "Descriptor" was deleted' in result.stdout


def test_buf_breaking_accepts_an_added_field(tmp_path: Path) -> None:
    """Adding a field is compatible, so the check above fails for the renumbering alone."""
    scratch = copy_modules(tmp_path / "scratch")
    edit_proto(scratch, r"^(\s*int64 size = 3;)$", "\\g<1>\n  // A new field.\n  string annotation = 4;")
    result = buf("breaking", scratch, "--against", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
