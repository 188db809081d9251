"""Registry bearer tokens (``auth.token``): distribution's validation, the access mapping,
the refusals, static tokens and mTLS beside them, key rotation, the audit trail, the cache.

The first half checks the verifier and the authorizer directly, with keys and tokens
made by ``helpers.tokens`` (a root CA, an optional intermediate, a signing certificate,
as a real token server issues them); the second half runs the real server.
Against Debian's docker-registry, see ``test_backend_registry.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from descriptor_client import (
    OCTET_STREAM as OCT,
)
from descriptor_client import (
    BlobUnknownError,
    ClientTLS,
    Descriptor,
    DescriptorClient,
    PermissionDeniedError,
    UnauthenticatedError,
)
from descriptor_client.rpcs import RPCS
from descriptor_server.config import ConfigError, from_dict
from descriptor_server.security import token_hash
from descriptor_server.security.authorizer import Authorizer
from descriptor_server.security.jose import jwk_thumbprints, libtrust_key_id
from descriptor_server.security.keys import TrustStore
from descriptor_server.security.registrytokens import LEEWAY, RegistryTokenVerifier, TokenInvalid
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.pki import CA
from helpers.support import Layout, ServerProcess, base_config, run_server_command, wait_for
from helpers.tokens import TokenIssuer, b64url, new_key

REPO, OTHER = "team/app", "team/other"
STATIC = "static-writer-token"
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def verifier(issuer: TokenIssuer, **kw: Any) -> RegistryTokenVerifier:
    trust = TrustStore(str(issuer.root_path), str(issuer.jwks_path), reloadinterval=kw.pop("reloadinterval", 0))
    return RegistryTokenVerifier(issuer=issuer.issuer, service=issuer.service, trust=trust, **kw)


def refused(v: RegistryTokenVerifier, token: str) -> str:
    with pytest.raises(TokenInvalid) as info:
        v.verify(token)
    return str(info.value)


@pytest.fixture(scope="module")
def rsa_issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("rsa"), algorithm="RS256")


@pytest.fixture(scope="module")
def ec_issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("ec"), algorithm="ES256", intermediate=True)


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    """Same names, other keys: what an attacker without the issuer's keys can make."""
    return TokenIssuer(tmp_path_factory.mktemp("rogue"), algorithm="RS256")


# -- validation, as distribution does it --------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"])
@pytest.mark.parametrize("via", ["x5c", "kid", "jwk"])
def test_accepted_for_every_algorithm_and_key_path(tmp_path: Path, algorithm: str, via: str) -> None:
    issuer = TokenIssuer(tmp_path, algorithm=algorithm, intermediate=algorithm == "ES256")
    grant = verifier(issuer).verify(issuer.mint([f"repository:{REPO}:pull,push"], via=via, subject="bob"))
    assert grant.subject == "bob"
    assert grant.allows("repository", REPO, "push")
    assert not grant.allows("repository", REPO, "delete")
    assert not grant.allows("repository", OTHER, "pull")


@pytest.mark.parametrize("kid_of", [libtrust_key_id, lambda k: sorted(jwk_thumbprints(k))[0]])
def test_root_certificate_keys_are_trusted_by_distribution_key_ids(rsa_issuer: TokenIssuer, kid_of: Any) -> None:
    """distribution 2.x names root keys by libtrust key ID, v3 by RFC 7638 thumbprint: both work."""
    kid = kid_of(rsa_issuer.root_key.public_key())
    token = rsa_issuer.mint([f"repository:{REPO}:pull"], via="none", header={"kid": kid}, key=rsa_issuer.root_key)
    assert verifier(rsa_issuer).verify(token).allows("repository", REPO, "pull")


def test_libtrust_key_id_shape(rsa_issuer: TokenIssuer) -> None:
    kid = libtrust_key_id(rsa_issuer.root_key.public_key())
    assert len(kid) == 59
    assert kid.count(":") == 11
    assert all(len(group) == 4 for group in kid.split(":"))


def test_refused_tokens(rsa_issuer: TokenIssuer, rogue: TokenIssuer) -> None:
    v = verifier(rsa_issuer)
    scopes = [f"repository:{REPO}:pull"]
    now = int(time.time())
    assert "issuer" in refused(v, rsa_issuer.mint(scopes, iss="someone-else"))
    assert "audience" in refused(v, rsa_issuer.mint(scopes, aud="another-registry"))
    assert "audience" in refused(v, rsa_issuer.mint(scopes, aud=None))
    assert "expired" in refused(v, rsa_issuer.mint(scopes, exp=now - int(LEEWAY) - 5))
    assert "expired" in refused(v, rsa_issuer.mint(scopes, exp=None))  # Go decodes a missing exp as 0
    assert "nbf" in refused(v, rsa_issuer.mint(scopes, nbf=now + int(LEEWAY) + 30))
    assert "signature" in refused(v, rsa_issuer.mint(scopes, key=rogue.key))  # right chain, wrong key
    assert "trusted root" in refused(v, rogue.mint(scopes))  # a chain to another root
    assert "untrusted key ID" in refused(v, rsa_issuer.mint(scopes, via="kid", header={"kid": "nope"}))
    assert "no signing key" in refused(v, rsa_issuer.mint(scopes, via="none"))
    # An embedded jwk is trusted only as a trusted key ID (then that key verifies) or by its chain.
    jwk = {**json.loads(rogue.jwks_path.read_text())["keys"][0], "kid": "attacker"}
    assert "untrusted jwk" in refused(v, rogue.mint(scopes, via="none", header={"jwk": jwk}))
    jwk["kid"] = rsa_issuer.kid
    assert "signature" in refused(v, rogue.mint(scopes, via="none", header={"jwk": jwk}))
    assert "integer" in refused(v, rsa_issuer.mint(scopes, exp=now + 300.5))
    assert "critical" in refused(v, rsa_issuer.mint(scopes, header={"crit": ["exp"]}))
    assert "access" in refused(v, rsa_issuer.mint(scopes, access={"type": "repository"}))
    assert "actions" in refused(v, rsa_issuer.mint(scopes, access=[{"type": "repository", "name": REPO, "actions": 1}]))


def test_leeway_is_distributions(rsa_issuer: TokenIssuer) -> None:
    v = verifier(rsa_issuer)
    now = int(time.time())
    assert v.verify(rsa_issuer.mint([], exp=now - int(LEEWAY) + 20)).subject == "alice"
    assert v.verify(rsa_issuer.mint([], nbf=now + int(LEEWAY) - 20)).subject == "alice"


def test_audience_list_and_wildcard_actions(rsa_issuer: TokenIssuer) -> None:
    v = verifier(rsa_issuer)
    grant = v.verify(rsa_issuer.mint([f"repository:{REPO}:*"], aud=["other", rsa_issuer.service]))
    assert all(grant.allows("repository", REPO, a) for a in ("pull", "push", "delete"))
    assert not grant.allows("repository", OTHER, "pull")


def test_alg_none_and_unlisted_algorithms(rsa_issuer: TokenIssuer) -> None:
    v = verifier(rsa_issuer, algorithms=["ES256"])
    assert "not allowed" in refused(v, rsa_issuer.mint([]))  # RS256 not in signingalgorithms
    claims = b64url(json.dumps(rsa_issuer.claims([f"repository:{REPO}:*"])).encode())
    for alg in ("none", "None", "NONE"):
        head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        assert "alg none" in refused(verifier(rsa_issuer), f"{head}.{claims}.")
        assert "alg none" in refused(verifier(rsa_issuer), f"{head}.{claims}.c2ln")


def test_hmac_with_the_public_key_is_refused(rsa_issuer: TokenIssuer) -> None:
    """The algorithm-confusion attack: HS256 keyed with the (public) root certificate."""
    import hashlib
    import hmac

    head = b64url(json.dumps({"alg": "HS256", "kid": rsa_issuer.kid}).encode())
    body = b64url(json.dumps(rsa_issuer.claims([f"repository:{REPO}:*"])).encode())
    secret = rsa_issuer.root_path.read_bytes()
    sig = b64url(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    assert "symmetric" in refused(verifier(rsa_issuer), f"{head}.{body}.{sig}")


def test_chain_rules(tmp_path: Path) -> None:
    """A signer that is not a CA cannot issue; an expired certificate fails; path length holds."""
    from helpers.tokens import certificate, der_b64

    issuer = TokenIssuer(tmp_path, algorithm="ES256", intermediate=True)
    v = verifier(issuer)
    scopes = [f"repository:{REPO}:pull"]
    # A certificate issued by the (non-CA) signer.
    sub_key = new_key("ES256")
    sub = certificate("sub signer", sub_key, (issuer.cert, issuer.key), ca=False)
    chain = [der_b64(sub), *(der_b64(c) for c in issuer.chain)]
    token = issuer.mint(scopes, via="none", header={"x5c": chain}, key=sub_key)
    assert "trusted root" in refused(v, token)
    # The intermediate has path length 0: a CA under it cannot issue.
    ca_key = new_key("ES256")
    sub_ca = certificate("sub CA", ca_key, (issuer.chain[1], issuer.root_key), ca=True)
    leaf = certificate("leaf", sub_key, (sub_ca, ca_key), ca=False)
    chain = [der_b64(leaf), der_b64(sub_ca), der_b64(issuer.chain[1])]
    assert "trusted root" in refused(v, issuer.mint(scopes, via="none", header={"x5c": chain}, key=sub_key))
    # An expired signing certificate.
    old = certificate("old signer", sub_key, (issuer.chain[1], issuer.key), ca=False, days=-0.001)
    chain = [der_b64(old), der_b64(issuer.chain[1])]
    assert "expired" in refused(v, issuer.mint(scopes, via="none", header={"x5c": chain}, key=sub_key))
    # Garbage in x5c.
    assert "x5c" in refused(v, issuer.mint(scopes, via="none", header={"x5c": ["bm90IGEgY2VydA=="]}))
    assert "x5c" in refused(v, issuer.mint(scopes, via="none", header={"x5c": "abc"}))
    assert "x5c" in refused(v, issuer.mint(scopes, via="none", header={"x5c": [der_b64(issuer.cert)] * 11}))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        b64url(b"[1]") + ".e30.c2ln",
        b64url(b'{"alg": 5}') + ".e30.c2ln",
        b64url(b'{"alg": "RS256"}') + ".bm90IGpzb24.c2ln",
        b64url(b'{"alg": "RS256"}') + ".e30.",
        "é.é.é",
        "x" * 300000,
    ],
)
def test_malformed_tokens(rsa_issuer: TokenIssuer, token: str) -> None:
    refused(verifier(rsa_issuer), token)


# -- the cache ------------------------------------------------------------------------------------------


def test_cache_is_bounded_lru_and_never_past_exp(rsa_issuer: TokenIssuer) -> None:
    clock = [time.time()]
    v = verifier(rsa_issuer, cachesize=2, clock=lambda: clock[0])
    calls = []
    real = v._verify
    v._verify = lambda *a: calls.append(1) or real(*a)  # type: ignore[method-assign]
    a, b, c = (rsa_issuer.mint([], subject=s, lifetime=100) for s in "abc")
    v.verify(a)
    v.verify(a)
    assert len(calls) == 1
    assert len(v) == 1
    v.verify(b)
    v.verify(a)  # a is now the most recent
    v.verify(c)  # evicts b
    assert len(v) == 2
    assert len(calls) == 3
    v.verify(a)
    assert len(calls) == 3
    v.verify(b)
    assert len(calls) == 4
    clock[0] += 101  # past exp, inside the leeway: verified again at every call, not cached
    v.verify(a)
    v.verify(a)
    assert len(calls) == 6
    clock[0] += LEEWAY
    with pytest.raises(TokenInvalid, match="expired"):
        v.verify(a)


def test_thousands_of_access_entries(rsa_issuer: TokenIssuer) -> None:
    v = verifier(rsa_issuer)
    scopes = [f"repository:team/r{i}:pull" for i in range(3000)]
    grant = v.verify(rsa_issuer.mint(scopes))
    assert grant.allows("repository", "team/r2999", "pull")
    assert not grant.allows("repository", "team/r3000", "pull")


# -- rotation ------------------------------------------------------------------------------------------


def test_reload_replaces_the_keys_and_drops_cached_tokens(tmp_path: Path) -> None:
    old, new = TokenIssuer(tmp_path / "old"), TokenIssuer(tmp_path / "new")
    bundle = tmp_path / "bundle.pem"
    shutil.copy(old.root_path, bundle)
    trust = TrustStore(str(bundle), "", reloadinterval=0)
    v = RegistryTokenVerifier(issuer=old.issuer, service=old.service, trust=trust)
    token = old.mint([])
    v.verify(token)
    shutil.copy(new.root_path, bundle)
    assert v.verify(token).subject == "alice"  # reloadinterval 0: only an explicit reload
    assert trust.reload()
    refused(v, token)
    assert v.verify(new.mint([])).subject == "alice"
    bundle.write_text("not a bundle any more")  # a broken file: the keys in force stay
    assert not trust.reload()
    assert v.verify(new.mint([])).subject == "alice"


def test_changed_files_are_noticed(tmp_path: Path) -> None:
    old, new = TokenIssuer(tmp_path / "old"), TokenIssuer(tmp_path / "new")
    jwks = tmp_path / "jwks.json"
    shutil.copy(old.jwks_path, jwks)
    trust = TrustStore("", str(jwks), reloadinterval=0.05)
    v = RegistryTokenVerifier(issuer=old.issuer, service=old.service, trust=trust)
    v.verify(old.mint([], via="kid"))
    data = json.loads(new.jwks_path.read_text())
    data["keys"][0]["kid"] = "rotated-kid"
    jwks.write_text(json.dumps(data))
    time.sleep(0.1)
    assert v.verify(new.mint([], via="kid", header={"kid": "rotated-kid"})).subject == "alice"
    refused(v, old.mint([], via="kid"))


# -- the access mapping -----------------------------------------------------------------------------------


def test_each_rpc_needs_its_action() -> None:
    auth = Authorizer()
    from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb

    assert auth.scope_of("Stat", pb.StatRequest(repository=REPO)) == ("repository", REPO, "pull")
    assert auth.scope_of("BatchStat", pb.BatchStatRequest(repository=REPO)) == ("repository", REPO, "pull")
    assert auth.scope_of("SetDescriptor", pb.SetDescriptorRequest(repository=REPO)) == ("repository", REPO, "push")
    assert auth.scope_of("Clear", pb.ClearRequest(repository=REPO)) == ("repository", REPO, "delete")
    assert auth.scope_of("Clear", pb.ClearRequest()) == ("registry", "descriptors", "delete")
    assert auth.scope_of("GetMetrics", pb.GetMetricsRequest()) == ("registry", "descriptors", "pull")
    assert auth.scope_of("Revalidate", pb.RevalidateRequest(repository=REPO)) == ("repository", REPO, "pull")
    assert auth.scope_of("Revalidate", pb.RevalidateRequest()) == ("registry", "descriptors", "pull")
    assert set(RPCS) == {"Stat", "BatchStat", "SetDescriptor", "Clear", "GetMetrics", "Revalidate"}


# -- configuration -----------------------------------------------------------------------------------------


def token_section(issuer: TokenIssuer, **extra: Any) -> dict[str, Any]:
    return issuer.auth_config("https://auth.example/token", **extra)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"issuer": ""}, "auth.token.issuer"),
        ({"service": None}, "auth.token.service"),
        ({"realm": ""}, "auth.token.realm"),
        ({"rootcertbundle": ""}, "auth.token"),
        ({"signingalgorithms": ["RS256", "XX1"]}, "auth.token.signingalgorithms[1]"),
        ({"globalaccess": {"type": ""}}, "auth.token.globalaccess"),
        ({"cachesize": -1}, "auth.token.cachesize"),
        ({"leeway": 5}, "auth.token.leeway"),
    ],
)
def test_config_errors_name_the_key(rsa_issuer: TokenIssuer, change: dict[str, Any], key: str) -> None:
    section = {**token_section(rsa_issuer), **change}
    with pytest.raises(ConfigError) as info:
        from_dict({"auth": {"token": section}})
    assert info.value.key == key


@pytest.mark.parametrize("which", ["rootcertbundle", "jwks"])
def test_unreadable_key_files_refuse_the_start(tmp_path: Path, rsa_issuer: TokenIssuer, which: str) -> None:
    config = base_config(tmp_path)
    config["auth"] = {"token": token_section(rsa_issuer, **{which: str(tmp_path / "missing")})}
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    done = run_server_command(["--config", str(path)])
    assert done.returncode == 2, done.stderr
    assert f"config error: auth.token.{which}: cannot read" in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": [{"kty": "RSA"}]}')
    config["auth"]["token"][which] = str(bad)
    path.write_text(yaml.safe_dump(config))
    done = run_server_command(["--check-config", str(path)])
    assert done.returncode == 2
    assert "auth.token" in done.stderr


def test_check_config_prints_the_section(tmp_path: Path, rsa_issuer: TokenIssuer) -> None:
    config = base_config(tmp_path)
    config["auth"] = {"token": token_section(rsa_issuer, signingalgorithms=["RS256", "ES256"])}
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config))
    done = run_server_command(["--check-config", str(path)])
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)["auth"]["token"]
    assert printed["issuer"] == rsa_issuer.issuer
    assert printed["signingalgorithms"] == ["RS256", "ES256"]
    assert printed["globalaccess"] == {"type": "registry", "name": "descriptors"}
    assert printed["cachesize"] == 10000


# -- the real server ---------------------------------------------------------------------------------------


class Secured:
    def __init__(self, server: ServerProcess, issuer: TokenIssuer, layout: Layout, digest: str) -> None:
        self.server, self.issuer, self.layout, self.digest = server, issuer, layout, digest

    @property
    def target(self) -> str:
        return self.server.target

    def client(self, token: str | None) -> DescriptorClient:
        return DescriptorClient(self.target, timeout=10, token=token or "")

    def audit(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.server.lines:
            if line.startswith("{") and '"descriptor_server.audit"' in line:
                lines.append(json.loads(line))
        return lines


def secured_config(root: Path, issuer: TokenIssuer, **token: Any) -> dict[str, Any]:
    config = base_config(root)
    config["log"] = {"level": "info", "formatter": "json"}
    config["auth"] = {
        "tokens": [{"name": "gc", "scope": "write", "sha256": token_hash(STATIC)}],
        "token": issuer.auth_config("https://auth.example/token", jwks=str(issuer.jwks_path), **token),
    }
    return config


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, ec_issuer: TokenIssuer) -> Iterator[Secured]:
    layout = Layout(tmp_path_factory.mktemp("root"))
    digest = layout.push(REPO, b"a layer behind registry tokens")
    proc = ServerProcess(secured_config(layout.root, ec_issuer), tmp_path_factory.mktemp("srv")).start()
    try:
        yield Secured(proc, ec_issuer, layout, digest)
    finally:
        proc.stop()


def test_pull_token_stats_in_its_repository_only(secured: Secured) -> None:
    token = secured.issuer.mint([f"repository:{REPO}:pull"])
    with secured.client(token) as client:
        assert client.stat(secured.digest, REPO).size == len(b"a layer behind registry tokens")
        results = client.batch_stat([secured.digest, "sha256:" + "0" * 64], REPO)
        assert isinstance(results[0], Descriptor)
        assert isinstance(results[1], BlobUnknownError)
        with pytest.raises(PermissionDeniedError) as info:
            client.stat(secured.digest, OTHER)
        assert info.value.metadata["scope"] == f"repository:{OTHER}:pull"
        assert f"repository:{OTHER}:pull" in info.value.message
        assert 'error="insufficient_scope"' in info.value.metadata["www-authenticate"]
        with pytest.raises(PermissionDeniedError, match=f"repository:{REPO}:push"):
            client.set_descriptor(secured.digest, Descriptor(OCT, secured.digest, 1), REPO)
        with pytest.raises(PermissionDeniedError, match=f"repository:{REPO}:delete"):
            client.clear(secured.digest, REPO)
        with pytest.raises(PermissionDeniedError, match="registry:descriptors:pull"):
            client.stat(secured.digest)
        with pytest.raises(PermissionDeniedError, match="registry:descriptors:pull"):
            client.metrics()


def test_concurrent_calls_with_different_tokens_are_each_judged_by_their_own(secured: Secured) -> None:
    """Many calls in flight at once on one connection, with tokens for R, for S, and none:
    each call is answered by its own token (the token is read per call, never shared)."""
    import asyncio

    from descriptor_client import AsyncDescriptorClient

    for_repo = secured.issuer.mint([f"repository:{REPO}:pull"], subject="r-reader")
    for_other = secured.issuer.mint([f"repository:{OTHER}:pull"], subject="s-reader")

    async def run() -> list[tuple[str, str]]:
        tokens = {"repo": for_repo, "other": for_other, "none": ""}
        clients = {name: AsyncDescriptorClient(secured.server.target, token=t) for name, t in tokens.items()}

        async def one(name: str) -> tuple[str, str]:
            try:
                await clients[name].stat(secured.digest, REPO)
                return (name, "ok")
            except (PermissionDeniedError, UnauthenticatedError) as err:
                return (name, type(err).__name__)

        try:
            return await asyncio.gather(*(one(list(tokens)[i % 3]) for i in range(300)))
        finally:
            for client in clients.values():
                await client.close()

    answers = asyncio.run(run())
    want = {"repo": "ok", "other": "PermissionDeniedError", "none": "UnauthenticatedError"}
    assert len(answers) == 300
    assert all(outcome == want[key] for key, outcome in answers), sorted(set(answers))


def test_unauthenticated_carries_the_challenge(secured: Secured) -> None:
    expired = secured.issuer.mint([f"repository:{REPO}:pull"], exp=int(time.time()) - 120)
    for token, error in ((None, ""), (expired, "invalid_token"), ("not.a.jwt", "invalid_token")):
        with secured.client(token) as client, pytest.raises(UnauthenticatedError) as info:
            client.stat(secured.digest, REPO)
        md = info.value.metadata
        assert md["realm"] == "https://auth.example/token"
        assert md["service"] == secured.issuer.service
        assert md["scope"] == f"repository:{REPO}:pull"
        hint = md["www-authenticate"]
        assert hint.startswith('Bearer realm="https://auth.example/token",service="test-registry"')
        assert f'scope="repository:{REPO}:pull"' in hint
        assert (f'error="{error}"' in hint) == bool(error)
        assert hint in info.value.message


def test_push_delete_and_wildcard(secured: Secured) -> None:
    digest = "sha256:" + "ab" * 32
    repo = "team/writes"
    with secured.client(secured.issuer.mint([f"repository:{repo}:pull,push"], subject="ci")) as client:
        client.set_descriptor(digest, Descriptor(OCT, digest, 7), repo)
        assert client.stat(digest, repo).size == 7
    with secured.client(secured.issuer.mint([f"repository:{repo}:*", "registry:descriptors:*"])) as client:
        client.clear(digest, repo)
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        client.set_descriptor(digest, Descriptor(OCT, digest, 7))  # the global scope
        assert client.metrics().requests >= 1


def test_static_tokens_take_precedence_and_health_stays_open(secured: Secured) -> None:
    with secured.client(STATIC) as client:  # a static write token: the whole service
        assert client.stat(secured.digest, REPO).digest == secured.digest
        client.metrics()
        with pytest.raises(BlobUnknownError):
            client.stat(secured.digest, OTHER)
    with grpc.insecure_channel(secured.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_audit_lines(secured: Secured) -> None:
    digest = "sha256:" + "cd" * 32
    with secured.client(secured.issuer.mint([f"repository:{REPO}:push"], subject="uploader")) as client:
        client.set_descriptor(digest, Descriptor(OCT, digest, 3), REPO)
        with pytest.raises(PermissionDeniedError):
            client.clear(digest, REPO)
    with secured.client(STATIC) as client:
        client.clear(digest, REPO)
    with secured.client("garbage") as client, pytest.raises(UnauthenticatedError):
        client.stat(digest, REPO)
    wait_for(lambda: len([a for a in secured.audit() if a.get("digest") == digest]) >= 4)
    mine = [a for a in secured.audit() if a.get("digest") == digest]
    by = {(a["method"], a["outcome"]): a for a in mine}
    ok = by[("SetDescriptor", "OK")]
    assert ok["principal"] == "uploader"
    assert ok["principal_kind"] == "registry-token"
    assert ok["repository"] == REPO
    assert ok["peer"].startswith("ipv4:127.0.0.1:")
    assert "repository:team/app:push" in ok["reason"]
    denied = by[("Clear", "PERMISSION_DENIED")]
    assert "repository:team/app:delete" in denied["reason"]
    assert denied["principal"] == "uploader"
    assert denied["principal_kind"] == "registry-token"
    assert by[("Clear", "OK")]["principal"] == "gc"
    assert by[("Clear", "OK")]["principal_kind"] == "static-token"
    assert "invalid bearer token" in by[("Stat", "UNAUTHENTICATED")]["reason"]
    assert by[("Stat", "UNAUTHENTICATED")]["principal_kind"] == "unknown"
    assert all(a["level"] == "info" and a["logger"] == "descriptor_server.audit" for a in mine)
    # Plain reads that pass are not audited (the call log has them at debug).
    assert not [a for a in secured.audit() if a["method"] == "Stat" and a["outcome"] == "OK"]


def test_hostile_tokens_answer_quickly_and_the_server_stays_up(secured: Secured) -> None:
    i = secured.issuer
    head = b64url(json.dumps({"alg": "none"}).encode())
    hostile = [
        "a.b.c",
        f"{head}.{b64url(json.dumps(i.claims([f'repository:{REPO}:*'])).encode())}.",
        i.mint([f"repository:{REPO}:pull"], key=new_key("ES256")),
        i.mint([f"repository:{REPO}:pull"], exp=int(time.time()) + 10**6, nbf=int(time.time()) + 10**5),
        "e" * 7000,
        i.mint([f"repository:r{n}:push" for n in range(80)]),
    ]
    for token in hostile:
        with secured.client(token) as client, pytest.raises((UnauthenticatedError, PermissionDeniedError)):
            client.stat(secured.digest, REPO)
    with secured.client(i.mint([f"repository:{REPO}:pull"])) as client:
        assert client.stat(secured.digest, REPO).digest == secured.digest


def test_descriptorctl_and_the_environment_pass_tokens(secured: Secured) -> None:
    token = secured.issuer.mint([f"repository:{REPO}:pull"])
    base = [sys.executable, "-m", "descriptor_client.cli", "--target", secured.target]
    ok = subprocess.run([*base, "--token", token, "stat", secured.digest, "-r", REPO, "--json"],
                        capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["digest"] == secured.digest
    denied = subprocess.run([*base, "stat", secured.digest, "-r", OTHER, "--json"],
                            capture_output=True, text=True, timeout=30, check=False,
                            env={**os.environ, "DESCRIPTOR_TOKEN": token})  # fmt: skip
    assert denied.returncode == 4
    assert "repository:team/other:pull" in denied.stdout + denied.stderr


def test_node_client_passes_registry_tokens(secured: Secured) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("node or tests/node/node_modules missing (./dev test installs them)")
    token = secured.issuer.mint([f"repository:{REPO}:pull"])
    done = subprocess.run(
        [node, str(NODE_DIR / "token_stat.mjs"), secured.target, token, secured.digest, REPO, OTHER],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0] == {"repository": REPO, "code": 0, "digest": secured.digest}
    assert answers[1]["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert answers[1]["reason"] == "PERMISSION_DENIED"
    assert answers[1]["scope"] == f"repository:{OTHER}:pull"
    assert answers[2]["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert f'scope="repository:{REPO}:pull"' in answers[2]["www-authenticate"]


# -- rotation, in the running server -------------------------------------------------------------------------


def test_sighup_and_file_changes_rotate_keys(tmp_path: Path) -> None:
    old, new, jwks_issuer = (TokenIssuer(tmp_path / n, name=n) for n in ("old", "new", "jw"))
    bundle, jwks = tmp_path / "bundle.pem", tmp_path / "jwks.json"
    shutil.copy(old.root_path, bundle)
    shutil.copy(old.jwks_path, jwks)
    layout = Layout(tmp_path / "root")
    digest = layout.push(REPO, b"rotated")
    config = base_config(layout.root)
    config["auth"] = {"token": {**old.auth_config(), "rootcertbundle": str(bundle), "jwks": str(jwks),
                                "reloadinterval": "200ms"}}  # fmt: skip
    scopes = [f"repository:{REPO}:pull"]
    with _serve(config, tmp_path) as server:

        def stat(token: str) -> bool:
            with DescriptorClient(server.target, timeout=10, token=token) as client:
                try:
                    client.stat(digest, REPO)
                    return True
                except UnauthenticatedError:
                    return False

        assert stat(old.mint(scopes))
        assert not stat(new.mint(scopes))
        # The bundle is replaced in place and SIGHUP sent: no restart.
        bundle.write_bytes(new.root_path.read_bytes() + old.root_path.read_bytes())
        server.signal(signal.SIGHUP)
        wait_for(lambda: "token keys reloaded (SIGHUP)" in server.output)
        assert stat(new.mint(scopes))
        assert stat(old.mint(scopes))
        # The JWKS changes on disk, with no signal: noticed within reloadinterval.
        data = json.loads(jwks_issuer.jwks_path.read_text())
        jwks.write_text(json.dumps(data))
        token = jwks_issuer.mint(scopes, via="kid")
        wait_for(lambda: stat(token), timeout=10)
        assert "token keys reloaded (files changed)" in server.output
        assert not stat(old.mint(scopes, via="kid"))
        assert server.proc is not None
        assert server.proc.poll() is None


def test_workers_forward_sighup(tmp_path: Path, rsa_issuer: TokenIssuer) -> None:
    config = base_config(tmp_path, delete=False)  # per-worker caches: deletion is refused with workers
    config["auth"] = {"token": rsa_issuer.auth_config()}
    config["grpc"]["workers"] = 2
    with _serve(config, tmp_path) as server:
        wait_for(lambda: server.output.count("listening on") >= 2)
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.output.count("token keys reloaded (SIGHUP)") == 2)
        with DescriptorClient(server.target, timeout=10, token=rsa_issuer.mint(["registry:descriptors:pull"])) as c:
            c.metrics()


def test_mtls_subject_is_the_audited_principal(tmp_path: Path) -> None:
    ca = CA(tmp_path, "audit-ca")
    server_cert = ca.issue("server", ips=("127.0.0.1",))
    client_cert = ca.issue("registry-frontend", client=True)
    config = base_config(tmp_path)
    config["log"] = {"level": "info", "formatter": "json"}
    config["grpc"]["tls"] = {"certificate": str(server_cert.cert), "key": str(server_cert.key),
                             "clientcas": [str(ca.pem)]}  # fmt: skip
    digest = "sha256:" + "ef" * 32
    with _serve(config, tmp_path) as server:
        tls = ClientTLS.from_files(str(ca.pem), str(client_cert.cert), str(client_cert.key))
        with DescriptorClient(server.target, timeout=10, tls=tls) as client:
            client.set_descriptor(digest, Descriptor(OCT, digest, 1), REPO)
        wait_for(lambda: '"descriptor_server.audit"' in server.output)
        line = next(json.loads(x) for x in server.lines if '"descriptor_server.audit"' in x)
        assert line["principal_kind"] == "certificate"
        assert "registry-frontend" in line["principal"]
        assert line["outcome"] == "OK"
        assert line["digest"] == digest


class _serve:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.proc = ServerProcess(config, workdir)

    def __enter__(self) -> ServerProcess:
        return self.proc.start()

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()


def test_token_parts_are_plain_base64url(rsa_issuer: TokenIssuer) -> None:
    """What the tests mint decodes as a registry decodes it (a guard on the helper itself)."""
    head, body, _ = rsa_issuer.mint([f"repository:{REPO}:pull"]).split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    assert header["alg"] == "RS256"
    assert len(header["x5c"]) == 1
    assert json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["aud"] == rsa_issuer.service


@pytest.mark.parametrize(
    ("audit", "tokens", "want"),
    [(None, False, False), ("on", False, True), (None, True, True), ("off", True, False)],
    ids=["auth-off-default", "auth-off-on", "auth-on-default", "auth-on-off"],
)
def test_the_audit_lines_have_their_own_switch(tmp_path: Path, audit: str | None, tokens: bool, want: bool) -> None:
    """log.audit: auto (the default) audits when calls carry an identity; on; off."""
    config = base_config(tmp_path)
    config["log"] = {"level": "info", "formatter": "json", **({"audit": audit} if audit else {})}
    token = "audit-switch-token"
    if tokens:
        config["auth"] = {
            "tokens": [{"name": "ci", "scope": "write", "sha256": hashlib.sha256(token.encode()).hexdigest()}]
        }
    digest = "sha256:" + "cd" * 32
    with _serve(config, tmp_path) as server:
        with DescriptorClient(server.target, timeout=10, token=token if tokens else None) as client:
            for _ in range(5):
                client.set_descriptor(digest, Descriptor(OCT, digest, 1), REPO)
        server.stop()
    audited = [x for x in server.lines if '"descriptor_server.audit"' in x]
    assert len(audited) == (5 if want else 0), server.output
