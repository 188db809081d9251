"""The ``registry`` backend against real distribution registries: Debian's 2.8 and v3.1.1.

Every test runs against both releases (the module-scoped ``registry_release`` fixture,
helpers/targets_backends.py). Blobs are pushed through the registry's HTTP API; Stat, Clear and the errors go
through our server started from a config with ``storage.registry``.

The conformance suite is not registered as a target for this backend: the registry's
HTTP API has no global scope, so global Stat on a miss is UNSUPPORTED, where cases 1
and 2 want BLOB_UNKNOWN. The cases that hold (3, 4 and 5: repository-scoped, with the
global entries answered by the cache) run here through a registry-backed server.
"""

from __future__ import annotations

import base64
import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BackendUnavailableError,
    BlobUnknownError,
    Descriptor,
    DescriptorClient,
    DigestInvalidFormatError,
    PermissionDeniedError,
    RepositoryNameInvalidError,
    UnauthenticatedError,
    UnsupportedError,
)
from helpers.backend_support import (
    RegistryProcess,
    RegistryRelease,
    TokenServer,
    health_of,
    htpasswd_line,
    push_blob,
)
from helpers.pki import CA
from helpers.support import OCT, REPO, ServerProcess, digest_of, refused_port, running_server
from helpers.targets_backends import server_config
from helpers.tokens import TokenIssuer
from test_conformance import test_case3_alias_is_stored_under_both_digests as _case3
from test_conformance import test_case4_repository_media_type_overrides_global as _case4
from test_conformance import test_case5_repository_clear as _case5

USER, PASSWORD = "registry-user", "s3cret pass"
_repos = itertools.count()


def new_repo() -> str:
    """A repository name no other test in the module uses."""
    return f"team/app-{next(_repos)}"


def registry_storage(url: str, **extra: Any) -> dict[str, Any]:
    return {"registry": {"url": url, "timeout": "5s", **extra}}


@pytest.fixture(scope="module")
def registry_nodelete(
    tmp_path_factory: pytest.TempPathFactory, registry_release: RegistryRelease
) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("registry-nodelete"), delete=False, release=registry_release)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def registry_basic(
    tmp_path_factory: pytest.TempPathFactory, registry_release: RegistryRelease
) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("registry-basic")
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(htpasswd_line(USER, PASSWORD) + "\n")
    auth = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
    proc = RegistryProcess(workdir, auth=auth, release=registry_release)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token"), user=USER, password=PASSWORD)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def registry_token(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer, registry_release: RegistryRelease
) -> Iterator[RegistryProcess]:
    auth = token_server.registry_auth()
    proc = RegistryProcess(tmp_path_factory.mktemp("registry-token"), auth=auth, release=registry_release)
    try:
        yield proc
    finally:
        proc.stop()


def head_status(url: str, repository: str, digest: str, headers: dict[str, str] | None = None) -> int:
    return httpx.head(f"{url}/v2/{repository}/blobs/{digest}", headers=headers, timeout=10).status_code


# -- no auth ----------------------------------------------------------------------------


def test_stat_reads_the_blob_head(tmp_path: Path, registry: RegistryProcess) -> None:
    repo, content = new_repo(), b"a layer pushed through the HTTP API"
    digest = push_blob(registry.url, repo, content)
    with (
        running_server(server_config(registry_storage(registry.url)), tmp_path) as server,
        DescriptorClient(server.target) as client,
    ):
        assert health_of(server.target) == "SERVING"
        assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
        # Another repository does not hold it.
        with pytest.raises(BlobUnknownError):
            client.stat(digest, new_repo())
        with pytest.raises(BlobUnknownError):
            client.stat(digest_of(b"never pushed"), repo)
        # The global scope has no HTTP equivalent (answered by the cache once known).
        with pytest.raises(UnsupportedError):
            client.stat(digest_of(b"never pushed"))
        assert client.stat(digest) == Descriptor(OCT, digest, len(content))
        with pytest.raises(DigestInvalidFormatError):
            client.stat("sha256:" + "Z" * 64, repo)
        with pytest.raises(RepositoryNameInvalidError):
            client.stat(digest, "Team/App")


def test_clear_deletes_the_blob_from_the_repository(tmp_path: Path, registry: RegistryProcess) -> None:
    repo = new_repo()
    digest = push_blob(registry.url, repo, b"to be deleted")
    other = new_repo()
    push_blob(registry.url, other, b"to be deleted")
    with (
        running_server(server_config(registry_storage(registry.url)), tmp_path) as server,
        DescriptorClient(server.target) as client,
    ):
        client.stat(digest, repo)
        client.clear(digest, repo)
        assert head_status(registry.url, repo, digest) == 404
        assert head_status(registry.url, other, digest) == 200
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        with pytest.raises(BlobUnknownError):
            client.clear(digest, repo)
        with pytest.raises(UnsupportedError):
            client.clear(digest)
        assert client.stat(digest, other).digest == digest


def test_clear_when_the_registry_refuses_deletion(tmp_path: Path, registry_nodelete: RegistryProcess) -> None:
    repo = new_repo()
    digest = push_blob(registry_nodelete.url, repo, b"kept")
    with (
        running_server(server_config(registry_storage(registry_nodelete.url)), tmp_path) as server,
        DescriptorClient(server.target) as client,
    ):
        with pytest.raises(UnsupportedError):
            client.clear(digest, repo)
        assert head_status(registry_nodelete.url, repo, digest) == 200


async def test_registry_backend_maps_delete_405_to_unsupported(registry_nodelete: RegistryProcess) -> None:
    # distribution with storage.delete.enabled off answers DELETE 405 (UNSUPPORTED):
    # the backend learns only at delete time, and says UNSUPPORTED, not UNAVAILABLE.
    from descriptor_server.backends.registry import RegistryBackend

    repo = new_repo()
    digest = push_blob(registry_nodelete.url, repo, b"kept by a registry that cannot delete")
    backend = RegistryBackend(registry_nodelete.url)
    try:
        assert backend.supports_clear(repo)  # nothing tells it before the DELETE
        with pytest.raises(UnsupportedError) as info:
            await backend.clear(digest, repo)
        assert "deletion" in info.value.message
        assert (await backend.stat(digest, repo)).digest == digest
    finally:
        await backend.close()


def test_unsupported_clear_leaves_the_cache_as_it_was(tmp_path: Path, registry_nodelete: RegistryProcess) -> None:
    repo = new_repo()
    digest = push_blob(registry_nodelete.url, repo, b"still cached")
    with (
        running_server(server_config(registry_storage(registry_nodelete.url)), tmp_path) as server,
        DescriptorClient(server.target) as client,
    ):
        client.stat(digest, repo)  # a miss: now cached
        with pytest.raises(UnsupportedError):
            client.clear(digest, repo)
        before = client.metrics()
        assert client.stat(digest, repo).digest == digest
        assert client.stat(digest).digest == digest
        after = client.metrics()
        assert after.hits - before.hits == 2  # both answered by the cache, as before the Clear


def test_registry_down_is_backend_unavailable(tmp_path: Path) -> None:
    with (
        refused_port() as port,
        running_server(server_config(registry_storage(f"http://127.0.0.1:{port}")), tmp_path) as server,
        DescriptorClient(server.target) as client,
    ):
        assert health_of(server.target) == "NOT_SERVING"
        with pytest.raises(BackendUnavailableError):
            client.stat(digest_of(b"x"), REPO)
        with pytest.raises(BackendUnavailableError):
            client.clear(digest_of(b"x"), REPO)


def test_registry_that_never_answers_times_out(tmp_path: Path) -> None:
    # Fault injection: a socket that accepts connections but never answers (no real
    # registry hangs on demand).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = server_config({"registry": {"url": url, "timeout": "300ms"}})
        with running_server(config, tmp_path) as server, DescriptorClient(server.target, timeout=30) as client:
            with pytest.raises(BackendUnavailableError) as info:
                client.stat(digest_of(b"x"), REPO)
            assert "timed out" in info.value.message


# -- basic auth ---------------------------------------------------------------------------


def test_basic_auth(tmp_path: Path, registry_basic: RegistryProcess) -> None:
    repo, content = new_repo(), b"behind basic auth"
    digest = push_blob(registry_basic.url, repo, content, headers=_basic_header())
    config = server_config(registry_storage(registry_basic.url, username=USER, password=PASSWORD))
    with running_server(config, tmp_path) as server, DescriptorClient(server.target) as client:
        assert health_of(server.target) == "SERVING"  # 401 on /v2/: up, and wants credentials
        assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
        client.clear(digest, repo)
        assert head_status(registry_basic.url, repo, digest, _basic_header()) == 404


@pytest.mark.parametrize("credentials", [{}, {"username": USER, "password": "wrong"}])
def test_basic_auth_refused(tmp_path: Path, registry_basic: RegistryProcess, credentials: dict[str, str]) -> None:
    repo = new_repo()
    digest = push_blob(registry_basic.url, repo, b"locked", headers=_basic_header())
    config = server_config(registry_storage(registry_basic.url, **credentials))
    with (
        running_server(config, tmp_path) as server,
        DescriptorClient(server.target) as client,
        pytest.raises(BackendUnavailableError),
    ):
        client.stat(digest, repo)


def _basic_header() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


# -- bearer tokens (distribution's `token` auth, with a token server) ----------------------


def test_bearer_token_flow(tmp_path: Path, registry_token: RegistryProcess, token_server: TokenServer) -> None:
    repo, content = new_repo(), b"behind token auth"
    push_token = token_server.issue([f"repository:{repo}:pull,push,delete"])
    digest = push_blob(registry_token.url, repo, content, headers={"Authorization": f"Bearer {push_token}"})
    assert head_status(registry_token.url, repo, digest) == 401
    before = len(token_server.requests)
    config = server_config(registry_storage(registry_token.url, username=USER, password=PASSWORD))
    with running_server(config, tmp_path) as server, DescriptorClient(server.target) as client:
        assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
        client.clear(digest, repo)
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
    asked = token_server.requests[before:]
    assert all(r["authorized"] for r in asked)
    scopes = [r["query"]["scope"][0] for r in asked]
    assert f"repository:{repo}:pull" in scopes
    assert f"repository:{repo}:delete" in scopes
    assert {r["query"]["service"][0] for r in asked} == {token_server.service}
    # One token per repository and verb, reused while it is valid.
    assert len(asked) == 2
    assert head_status(registry_token.url, repo, digest, {"Authorization": f"Bearer {push_token}"}) == 404


def test_bearer_token_refused_by_the_token_server(
    tmp_path: Path, registry_token: RegistryProcess, token_server: TokenServer
) -> None:
    config = server_config(registry_storage(registry_token.url, username=USER, password="wrong"))
    with (
        running_server(config, tmp_path) as server,
        DescriptorClient(server.target) as client,
        pytest.raises(BackendUnavailableError),
    ):
        client.stat(digest_of(b"x"), new_repo())


def _token_requests(token_server: TokenServer, repo: str) -> int:
    return sum(1 for r in token_server.requests if r["query"].get("scope") == [f"repository:{repo}:pull"])


async def test_bearer_tokens_are_bounded_least_recently_used_first(
    registry_token: RegistryProcess, token_server: TokenServer
) -> None:
    # One token per repository: 60 repositories with room for 20 keep the 20 used last.
    from descriptor_server.backends.registry import RegistryBackend

    backend = RegistryBackend(registry_token.url, username=USER, password=PASSWORD, max_tokens=20)
    repos = [new_repo() for _ in range(60)]
    absent = digest_of(b"never pushed")
    try:
        for repo in repos:
            with pytest.raises(BlobUnknownError):
                await backend.stat(absent, repo)
            with pytest.raises(BlobUnknownError):
                await backend.stat(absent, repos[0])  # kept in use: never the least recent
        assert backend.tokens_held == 20
        assert _token_requests(token_server, repos[0]) == 1
        assert _token_requests(token_server, repos[-1]) == 1
        with pytest.raises(BlobUnknownError):
            await backend.stat(absent, repos[-1])  # kept: no new token
        assert _token_requests(token_server, repos[-1]) == 1
        with pytest.raises(BlobUnknownError):
            await backend.stat(absent, repos[1])  # dropped long ago: a new token
        assert _token_requests(token_server, repos[1]) == 2
        assert backend.tokens_held == 20
    finally:
        await backend.close()


async def test_bearer_token_issued_at_is_honoured(registry_token: RegistryProcess, token_server: TokenServer) -> None:
    # distribution's token server sends issued_at with expires_in: a token issued 58 s
    # ago for 60 s has 2 s left, less than the refresh margin, so it is used once and
    # not kept; a fresh one is kept and reused.
    from descriptor_server.backends.registry import RegistryBackend

    backend = RegistryBackend(registry_token.url, username=USER, password=PASSWORD)
    absent = digest_of(b"never pushed")
    stale_repo, fresh_repo = new_repo(), new_repo()
    token_server.expires_in, token_server.issued_ago = 60, 58.0
    try:
        for _ in range(3):
            with pytest.raises(BlobUnknownError):
                await backend.stat(absent, stale_repo)
        assert _token_requests(token_server, stale_repo) == 3
        assert backend.tokens_held == 0
        token_server.issued_ago = 0.0
        for _ in range(3):
            with pytest.raises(BlobUnknownError):
                await backend.stat(absent, fresh_repo)
        assert _token_requests(token_server, fresh_repo) == 1
        assert backend.tokens_held == 1
    finally:
        token_server.expires_in, token_server.issued_ago = 300, None
        await backend.close()


def test_token_lifetime_follows_distribution() -> None:
    from descriptor_server.backends.registry import token_lifetime

    now = 1_700_000_000.0
    assert token_lifetime(300, None, now) == 300
    assert token_lifetime(None, None, now) == 60  # absent: 60 s
    assert token_lifetime(10, None, now) == 60  # below the minimum: 60 s
    assert token_lifetime("bogus", None, now) == 60
    assert token_lifetime(300, "2023-11-14T22:13:20Z", now) == 300  # issued now
    assert token_lifetime(300, "2023-11-14T22:12:20Z", now) == 240  # issued a minute ago
    assert token_lifetime(300, "2023-11-14T22:23:20Z", now) == 300  # a clock ahead never extends it
    assert token_lifetime(300, "2023-11-14T21:00:00Z", now) < 0  # long expired
    assert token_lifetime(300, "not a time", now) == 300


# -- one registry token, for the registry and for the service (auth.token on both) ------------


@pytest.mark.parametrize(
    ("algorithm", "via"),
    [("RS256", "x5c"), ("ES256", "x5c"), ("ES256", "root-kid")],
    ids=["RS256-x5c-chain", "ES256-x5c-chain", "ES256-kid-of-root"],
)
def test_registry_token_is_honoured_by_the_registry_and_the_service(tmp_path: Path, algorithm: str, via: str) -> None:
    """Debian's docker-registry 2.8 and our server, configured alike, grant the same token the same."""
    from descriptor_server.security.jose import libtrust_key_id

    issuer = TokenIssuer(tmp_path / "issuer", algorithm=algorithm, intermediate=algorithm == "ES256")
    realm = "http://127.0.0.1:9/token"  # the challenge's realm; tokens are minted here directly
    registry = RegistryProcess(tmp_path / "registry", auth={"token": issuer.auth_config(realm)})
    try:
        repo, other, content = new_repo(), new_repo(), b"one token, two verifiers"
        for name in (repo, other):
            pusher = issuer.mint([f"repository:{name}:pull,push"], subject="ci")
            digest = push_blob(registry.url, name, content, headers={"Authorization": f"Bearer {pusher}"})
        if via == "x5c":
            token = issuer.mint([f"repository:{repo}:pull"], subject="puller")
        else:  # distribution 2.x names a root certificate's key by its libtrust key ID
            kid = libtrust_key_id(issuer.root_key.public_key())
            token = issuer.mint([f"repository:{repo}:pull"], via="none", header={"kid": kid}, key=issuer.root_key)
        bearer = {"Authorization": f"Bearer {token}"}
        assert head_status(registry.url, repo, digest, bearer) == 200
        assert head_status(registry.url, other, digest, bearer) == 401
        challenge = httpx.head(f"{registry.url}/v2/{other}/blobs/{digest}", headers=bearer).headers
        assert f'scope="repository:{other}:pull"' in challenge["www-authenticate"]

        # A token from other keys (same issuer name, same claims) is refused by both.
        rogue = TokenIssuer(tmp_path / "rogue", algorithm=algorithm).mint([f"repository:{repo}:pull"])
        assert head_status(registry.url, repo, digest, {"Authorization": f"Bearer {rogue}"}) == 401

        config = server_config({"filesystem": {"rootdirectory": str(tmp_path / "registry" / "storage")}})
        config["auth"] = {"token": issuer.auth_config(realm)}
        with running_server(config, tmp_path) as server:
            with DescriptorClient(server.target, token=token) as client:
                assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
                with pytest.raises(PermissionDeniedError) as info:
                    client.stat(digest, other)
                assert info.value.metadata["scope"] == f"repository:{other}:pull"
                assert info.value.metadata["www-authenticate"].startswith(f'Bearer realm="{realm}"')
            with DescriptorClient(server.target, token=rogue) as client, pytest.raises(UnauthenticatedError):
                client.stat(digest, repo)
    finally:
        registry.stop()


# -- https ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_https(
    tmp_path_factory: pytest.TempPathFactory, registry_release: RegistryRelease
) -> Iterator[tuple[RegistryProcess, CA]]:
    pki = tmp_path_factory.mktemp("registry-pki")
    ca = CA(pki, "registry-ca")
    cert = ca.issue("registry", ips=("127.0.0.1",))
    tls = (cert.cert, cert.key, ca.pem)
    proc = RegistryProcess(tmp_path_factory.mktemp("registry-https"), tls=tls, release=registry_release)
    try:
        yield proc, ca
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("tls_keys", "trusted"),
    [({"rootcas": "ca"}, True), ({}, False), ({"insecureskipverify": True}, True)],
    ids=["rootcas", "untrusted", "insecureskipverify"],
)
def test_https_registry(
    tmp_path: Path, registry_https: tuple[RegistryProcess, CA], tls_keys: dict[str, Any], trusted: bool
) -> None:
    registry, ca = registry_https
    repo = new_repo()
    digest = push_blob(registry.url, repo, b"over https", verify=registry.verify)
    extra = {k: [str(ca.pem)] if v == "ca" else v for k, v in tls_keys.items()}
    with (
        running_server(server_config(registry_storage(registry.url, **extra)), tmp_path) as server,
        DescriptorClient(server.target) as client,
    ):
        if trusted:
            assert client.stat(digest, repo) == Descriptor(OCT, digest, len(b"over https"))
        else:
            with pytest.raises(BackendUnavailableError) as info:
                client.stat(digest, repo)
            assert "CERTIFICATE_VERIFY_FAILED" in info.value.message


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"url": ""}, "storage.registry.url"),
        ({"url": "registry.example:5000"}, "storage.registry.url"),
        ({"url": "http://127.0.0.1:5000", "timeout": "soon"}, "storage.registry.timeout"),
        ({"url": "http://127.0.0.1:5000", "rootcas": ["/nonexistent/ca.pem"]}, "storage.registry.rootcas"),
    ],
)
def test_bad_registry_config_is_refused_naming_the_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    proc = ServerProcess(server_config({"registry": section}), tmp_path)
    with pytest.raises(RuntimeError) as info:
        proc.start(timeout=60)
    assert proc.proc is not None
    assert proc.proc.wait(10) == 2
    assert f"{key}:" in str(info.value)


# -- the conformance cases that hold without a global scope ----------------------------------


@pytest.fixture
async def registry_backed(tmp_path: Path, registry: RegistryProcess) -> AsyncIterator[AsyncDescriptorClient]:
    proc = ServerProcess(server_config(registry_storage(registry.url)), tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            yield client
    finally:
        proc.stop()


@pytest.mark.parametrize("case", [_case3, _case4, _case5], ids=["case3", "case4", "case5"])
async def test_conformance_cases_with_a_repository_scope(registry_backed: AsyncDescriptorClient, case: Any) -> None:
    await case(registry_backed)
