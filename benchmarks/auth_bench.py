#!/usr/bin/env python3
"""Cost of registry-token auth on the Stat hit path, as a ratio within one run.

Starts, on loopback, the service (in-memory cache) over one storage root without auth,
with a static bearer token, with ``auth.token`` (a root CA, an ES256 signing
certificate in the token's ``x5c``, as a real token server issues them) and with
``auth.token.cachesize: 0`` (every call verifies the token: chain, signature, claims;
to show what the cache saves). Each gets the same ``h2load`` load (one connection, 16
streams) of one repository-scoped ``Stat`` hit, carrying ``authorization: Bearer
<token>`` where auth is on. A control row sends the registry token's header to the
server without auth (what the header alone costs in gRPC core, whatever checks it).
Rounds are interleaved, each in a rotated order; the best rate of each setup is shown,
and each ratio is the median over the rounds of that round's rate against no auth's.
Goal: token auth keeps ≥ 0.9x the Stat-hit rate without auth.

``python benchmarks/auth_bench.py [--quick]`` runs it alone; ``benchmarks/run.py``
runs it after its own unary figures (``--no-auth`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.descriptor import Descriptor

REPO = "bench/app"
STATIC = "bench-static-token"


def _server(name: str, work: Path, auth: dict[str, Any] | None) -> common.Server:
    root = work / "registry"
    root.mkdir(exist_ok=True)
    config = common.service_config(root, grpc_settings={"maxmetadatasize": 16384}, auth=auth)
    return common.service_server(f"auth-{name}", work, config)


async def _prime(target: str, digest: str, token: str) -> None:
    from descriptor_client import AsyncDescriptorClient

    async with AsyncDescriptorClient(target, token=token) as client:
        await client.set_descriptor(digest, Descriptor(common.OCT, digest, 1000), REPO)
        assert (await client.stat(digest, REPO)).size == 1000


def measure(h2: str, work: Path, rounds: int, n: int) -> dict[str, Any]:
    """Stat-hit rates without auth, with a static token, with registry tokens (cached and not)."""
    from helpers.tokens import TokenIssuer

    issuer = TokenIssuer(work / "issuer", algorithm="ES256", intermediate=True)
    pull_push = issuer.mint([f"repository:{REPO}:pull,push"], lifetime=3600)
    token_auth = {"token": issuer.auth_config("https://auth.example/token")}
    static_auth = {
        "tokens": [{"name": "bench", "scope": "write", "sha256": hashlib.sha256(STATIC.encode()).hexdigest()}]
    }
    setups = {
        "noauth": (None, ""),
        "noauth_header": (None, pull_push),  # control: the same header, nothing checks it
        "static": (static_auth, STATIC),
        "token": (token_auth, pull_push),
        "token_nocache": ({"token": {**token_auth["token"], "cachesize": 0}}, pull_push),
    }
    digest = common.digest_of(0, "auth")
    body = work / "auth-stat.grpc"
    body.write_bytes(common.framed(pb.StatRequest(digest=digest, repository=REPO).SerializeToString()))
    servers: dict[str, common.Server] = {}
    try:
        for name, (auth, token) in setups.items():
            if name == "noauth_header":
                servers[name] = servers["noauth"]
                continue
            servers[name] = _server(name, work, auth).start()
            asyncio.run(_prime(servers[name].target, digest, token))
        rates: dict[str, list[float]] = {name: [] for name in setups}
        order = list(setups)
        for r in range(rounds):
            # Each round in a rotated order, so no setup always runs first (or last).
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                token = setups[name][1]
                headers = [f"authorization: Bearer {token}"] if token else []
                res = common.h2load(h2, servers[name].port, body, n, headers=headers)
                if res["failed"]:
                    raise RuntimeError(f"auth {name}: {res['failed']} failed requests")
                rates[name].append(res["rps"])
                common.say(f"round {r + 1}: Stat hit, auth {name}: {res['rps']:.0f}/s")
        ghz_rates = _ghz_rounds(servers, digest, pull_push, rounds, n)
    finally:
        for srv in {id(s): s for s in servers.values()}.values():
            srv.stop()
    out: dict[str, Any] = {**_summary(rates), "all": rates, "token_bytes": len(pull_push)}
    if ghz_rates:
        out["ghz"] = _summary(ghz_rates)
    return out


def _summary(rates: dict[str, list[float]]) -> dict[str, Any]:
    """The best rate of each setup, and its ratio to no auth: the median of the rounds'
    ratios (each round's rates measured seconds apart), steadier on a shared machine than
    a ratio of two best-of figures."""
    base = rates["noauth"]
    return {
        "rps": {name: max(values) for name, values in rates.items()},
        "ratio": {
            name: statistics.median(v / b for v, b in zip(values, base, strict=True)) for name, values in rates.items()
        },
    }


def _goal(ratio: float) -> str:
    return f"≥ 0.9x {'met' if ratio >= 0.9 else 'NOT met'}"


def _ghz_rounds(
    servers: dict[str, common.Server], digest: str, token: str, rounds: int, n: int
) -> dict[str, list[float]]:
    """The same Stat hits from a real gRPC client (ghz: grpc-go), without auth and with the
    cached registry token; {} when ghz is not in .tools/bin."""
    import go_bench

    ghz = go_bench.tool("ghz")
    if ghz is None:
        common.say("ghz not in .tools/bin (./dev bench installs it): the auth ghz row is skipped")
        return {}
    rates: dict[str, list[float]] = {"noauth": [], "token": []}
    for r in range(rounds):
        for name in ("noauth", "token") if r % 2 == 0 else ("token", "noauth"):
            metadata = {"authorization": f"Bearer {token}"} if name == "token" else None
            rps = go_bench.ghz_stat(ghz, servers[name].target, digest, n, repository=REPO, metadata=metadata)
            rates[name].append(rps)
            common.say(f"round {r + 1}: Stat hit over ghz, auth {name}: {rps:.0f}/s")
    return rates


def render(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rps = res["rps"]
    base = rps["noauth"]
    rows = [("Stat hit in a repository, no auth", f"{base:,.0f} calls/s", "baseline", "")]
    labels = {
        "noauth_header": "  no auth, same token header sent (transport cost)",
        "static": "  static bearer token",
        "token": f"  registry token (ES256 x5c chain, {res['token_bytes']} B), cached",
        "token_nocache": "  registry token, cachesize 0 (verified every call)",
    }
    for name, label in labels.items():
        ratio = res["ratio"][name]
        want = _goal(ratio) if name == "token" else "(no goal)"
        rows.append((label, f"{rps[name]:,.0f} calls/s", f"{ratio:.2f}x no auth", want))
    if "ghz" in res:
        ghz = res["ghz"]
        rows.append(
            (
                f"  registry token, cached, from ghz (grpc-go; ghz without auth: {ghz['rps']['noauth']:,.0f} calls/s)",
                f"{ghz['rps']['token']:,.0f} calls/s",
                f"{ghz['ratio']['token']:.2f}x no auth",
                _goal(ghz["ratio"]["token"]),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost of registry-token auth on Stat hits (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="fewer calls, one round")
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args(argv)
    h2 = common.ensure_h2load()
    if h2 is None:
        common.say("h2load missing: nothing measured")
        return 1
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="descriptor-auth-bench-") as tmp:
        res = measure(h2, Path(tmp), rounds, 4000 if args.quick else 30000)
    width = max(len(r[0]) for r in render(res))
    for row in render(res):
        print(f"{row[0]:<{width}}  {row[1]:>16}  {row[2]:>16}  {row[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
