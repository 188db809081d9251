"""deploy/Containerfile read as text: stages, user, files, baked config (deploy/test_image.py runs it)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

from descriptor_server import config as cfg
from helpers.support import run_server_command

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
CONFIG = ROOT / "deploy" / "container-config.yml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_build_stages_then_a_last_that_copies_only_the_built_environment() -> None:
    # deps (the locked dependencies: ./dev image keeps it tagged as the build cache), then
    # build (the wheels of the sources over it), then the image itself.
    deps, build_only, final = stages()
    assert deps[0][1].endswith(" AS deps")
    assert build_only[0][1] == "deps AS build"
    build = deps + build_only
    copies = [args for word, args in final if word == "COPY"]
    assert "--from=build /opt/descriptor-service /opt/descriptor-service" in copies
    assert not [args for args in copies if args.split()[0] in {"client/", "server/", "."}]  # no source tree
    build_run = " ".join(args for word, args in build if word == "RUN")
    assert "pip wheel -q --no-deps --no-build-isolation" in build_run
    assert "python3 -m venv --without-pip /opt/descriptor-service" in build_run  # no pip ships
    # The dependencies are uv.lock's, with their hashes.
    assert "uv export --frozen" in build_run
    assert "--require-hashes -r /tmp/runtime.txt" in build_run
    copied = " ".join(args for word, args in build if word == "COPY")
    assert "uv.lock" in copied
    assert "tools/uv-requirements.txt" in copied


def test_every_backend_is_installed_by_default() -> None:
    """The s3 backend's boto3 is an extra (pyproject.toml); the image installs it unless told."""
    build = dict(stages()[0])
    assert build["ARG"] == 'EXTRAS="s3"'
    with (ROOT / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(dep.startswith("boto3") for dep in extras["s3"])


def test_it_exposes_the_listeners_of_its_config() -> None:
    config = cfg.load(str(CONFIG), environ={})
    exposed = {int(p) for word, args in stages()[-1] if word == "EXPOSE" for p in args.split()}
    listeners = {config.grpc.addr, config.grpc.healthaddr, config.http.debug.addr}
    assert exposed == {int(a.rsplit(":", 1)[1]) for a in listeners}
    assert config.http.debug.prometheus.enabled


def test_non_root_and_stops_with_sigterm() -> None:
    final = dict(stages()[-1])
    user, _, group = final["USER"].partition(":")
    assert user.isdigit()
    assert int(user) > 0
    assert group.isdigit()
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == ["descriptor-server"]
    assert json.loads(final["CMD"]) == ["--config", "/etc/descriptor/config.yml"]
    assert "PYTHONDONTWRITEBYTECODE=1" in final["ENV"]  # nothing written to the read-only root


def test_the_files_it_copies_exist() -> None:
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_baked_config_is_accepted(tmp_path: Path) -> None:
    config = cfg.load(str(CONFIG), environ={})
    assert config.grpc.addr == "0.0.0.0:5051"
    assert config.grpc.healthaddr == "0.0.0.0:5053"
    assert config.storage.filesystem is not None
    assert config.storage.filesystem.rootdirectory == "/var/lib/registry"
    done = run_server_command(["--check-config", str(CONFIG)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
