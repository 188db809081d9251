"""The examples of the README and of docs/*.md run as written, each against a fresh server.

The files are read at test time (``$README_EXAMPLES_FILE`` names one other file to read
instead, to try a corrected text before pasting it). Which fenced blocks are *examples*:

- a ``python`` block is an example when its first statement is an import: it is a
  program, not a fragment (fragments such as ``DescriptorClient("dns:///…")`` start
  with something else);
- a ``sh`` block is an example when every command in it (after ``VAR=value`` prefixes,
  in every pipeline and ``&&``/``;`` list) is one of :data:`SH_COMMANDS`: the project's
  client and checks and a few standard text tools. A block that starts a server, builds,
  installs or runs the test suite (``./dev``, ``pytest``, ``npm``, ``go``, ``protoc``,
  ``grpcurl``, ``descriptor-server --config``) is a recipe, not an example;
- ``<!-- example -->`` on the line before the fence makes any block an example, and
  ``<!-- not an example: reason -->`` excludes one.

Each example runs in its own process, with the repository as the working directory,
against its own server: the embedded default (``descriptor-server`` with no config,
in-memory cache over an empty ``./data``) with deletion enabled so Clear can be shown.
Whatever an example needs in the cache it must set itself. The server listens on a free
port; ``127.0.0.1:5051`` in the example text is replaced by that address and
``DESCRIPTOR_TARGET`` points there. An example passes when it exits 0 (``sh`` blocks run
under ``bash -e -o pipefail``, so every command must succeed) without a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.support import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
README = Path(os.environ.get("README_EXAMPLES_FILE") or ROOT / "README.md")
#: Every file whose examples run: the README and the docs (or the one file named).
FILES = [README] if os.environ.get("README_EXAMPLES_FILE") else [README, *sorted((ROOT / "docs").glob("*.md"))]
DEFAULT_TARGET = "127.0.0.1:5051"

#: The commands a ``sh`` example may use (the first word of each command).
SH_COMMANDS = frozenset(
    {"descriptorctl", "descriptor-server", "export", "printf", "echo", "sha256sum", "cut", "python3", "python"}
)
#: ``descriptor-server`` in an example may only check or describe, never serve.
SERVER_FLAGS = ("--check-config", "--version", "--help")

FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*(?P<what>example|not an example)\b[^>]*-->\s*\Z")


@dataclass(frozen=True)
class Block:
    file: str  # the file's name, relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    marker: str | None  # "example", "not an example" or None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{self.lang}"


def blocks(text: str, file: str = "README.md") -> Iterator[Block]:
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n")
        last = before.rsplit("\n", 1)[-1]
        marker = MARKER.search(last)
        what = marker["what"] if marker else None
        yield Block(file, text.count("\n", 0, m.start()) + 1, m["lang"], m["body"], what)


def logical_lines(body: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return body.replace("\\\n", " ").splitlines()


def sh_commands(body: str) -> list[list[str]] | None:
    """Each simple command's words (after ``VAR=value`` prefixes), or None if it does not parse."""
    commands: list[list[str]] = []
    for line in logical_lines(body):
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError:
            return None
        current: list[str] = []
        for word in [*words, ";"]:
            if word and set(word) <= set(";&|()<>"):
                if current:
                    commands.append(current)
                current = []
            elif not current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
                continue  # a VAR=value prefix (or a bare assignment)
            else:
                current.append(word)
    return commands


def is_sh_example(body: str) -> bool:
    commands = sh_commands(body)
    if not commands:
        return False
    for words in commands:
        name = words[0]
        if name not in SH_COMMANDS:
            return False
        if name == "descriptor-server" and not any(flag in words for flag in SERVER_FLAGS):
            return False
    return True


def is_python_example(body: str) -> bool:
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return stripped.startswith(("import ", "from "))
    return False


def is_example(block: Block) -> bool:
    if block.marker == "not an example":
        return False
    if block.marker == "example":
        return True
    if block.lang == "python":
        return is_python_example(block.body)
    if block.lang in ("sh", "bash", "shell"):
        return is_sh_example(block.body)
    return False


def name_of(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def examples() -> list[Block]:
    return [b for path in FILES for b in blocks(path.read_text(), name_of(path)) if is_example(b)]


EXAMPLES = examples()


def test_the_readme_has_examples_of_both_kinds() -> None:
    langs = {b.lang for b in EXAMPLES if b.file == name_of(README)}
    assert {"python", "sh"} <= langs, [b.id for b in EXAMPLES]


def test_the_rule_tells_examples_from_recipes_and_fragments() -> None:
    assert is_python_example("import asyncio\nprint(1)\n")
    assert not is_python_example('DescriptorClient("dns:///x:5051")\n')
    assert is_sh_example("export X=1\ndescriptorctl stat sha256:00 --json   # comment\n")
    assert is_sh_example('T=$(python3 -c "print(1)")\nprintf %s "$T" | sha256sum | cut -d" " -f1\n')
    assert is_sh_example("descriptor-server --check-config deploy/reference-config.yml\n")
    assert not is_sh_example("descriptor-server --config /etc/descriptor/config.yml\n")  # serves
    assert not is_sh_example("X=none descriptor-server --config c.yml\n")
    assert not is_sh_example("./dev serve\n")
    assert not is_sh_example(".venv/bin/pytest -q tests/server/test_cli.py\n")
    assert not is_sh_example("mkdir -p gen/go\nprotoc -I protos \\\n  --go_out=gen/go x.proto\n")
    assert not is_sh_example("descriptorctl stat x && grpcurl -plaintext h:1 list\n")
    text = (
        "<!-- not an example: needs TLS files -->\n```python\nimport ssl\n```\n<!-- example -->\n```sh\n./dev x\n```\n"
    )
    found = list(blocks(text))
    assert [(b.marker, is_example(b)) for b in found] == [("not an example", False), ("example", True)]


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """``descriptor-server`` with no config in a directory with an empty ``./data``."""
    workdir = tmp_path / "server"
    (workdir / "data").mkdir(parents=True)
    env = {"DESCRIPTOR_GRPC_ADDR": "127.0.0.1:0", "DESCRIPTOR_STORAGE_DELETE_ENABLED": "true"}
    server = ServerProcess({}, workdir, env=env, args=[]).start()
    try:
        yield server
    finally:
        server.stop()


def example_env(target: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    env["DESCRIPTOR_TARGET"] = target
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_example_runs_as_written(block: Block, default_server: ServerProcess) -> None:
    code = block.body.replace(DEFAULT_TARGET, default_server.target)
    shell = ["bash", "-e", "-o", "pipefail", "-c", code]
    command = [sys.executable, "-c", code] if block.lang == "python" else shell
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=example_env(default_server.target),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = f"{block.id} (exit {done.returncode}):\n{block.body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
