"""BatchStat end to end (this process as the client), and the peer that reads Redis directly.

- :func:`batch_load`: BatchStat calls back to back from a few tasks, every response decoded;
- :func:`redis_peer`: what a Python component gets by pipelining ``HMGET blobs::<d>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
from common import pb
from descriptor_client.rpcs import SERVICE


async def batch_load(target: str, request: bytes, want: int, seconds: float, concurrency: int) -> dict[str, float]:
    """BatchStat calls back to back from ``concurrency`` tasks; every response decoded."""
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(f"/{SERVICE}/BatchStat")

        async def one() -> int:
            resp = pb.BatchStatResponse.FromString(await call(request, timeout=30))
            return sum(1 for r in resp.results if r.WhichOneof("result") == "descriptor")

        for _ in range(3):  # warm up (fills the server's memo)
            got = await one()
        if got != want:
            raise RuntimeError(f"BatchStat answered {got} descriptors of {want}")
        total = calls = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal total, calls
            while time.perf_counter() < deadline:
                total += await one()
                calls += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {"descriptors_per_s": total / elapsed, "calls_per_s": calls / elapsed}


def redis_peer(addr: str, digests: Sequence[str], seconds: float) -> dict[str, float]:
    """What a Python component gets by pipelining ``HMGET blobs::<d>`` to Redis directly."""
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    host, port = addr.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    keys = [f"blobs::{d}" for d in digests]

    def one() -> int:
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, "digest", "size", "mediatype")
        return sum(1 for row in pipe.execute() if row[0] is not None)

    if one() != len(keys):
        raise RuntimeError("redis peer: the descriptors are not in Redis")
    total = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        total += one()
    return {"descriptors_per_s": total / (time.perf_counter() - start), "hiredis": float(HIREDIS_AVAILABLE)}
