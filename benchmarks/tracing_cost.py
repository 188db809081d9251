"""The Stat-hit cost of observability: a baseline tree against this tree, tracing off and on.

    .venv/bin/python benchmarks/tracing_cost.py --baseline DIR [--rounds 3] [-n 20000]

``DIR`` is another checkout of the project (for example ``git worktree add /tmp/base
main``, or ``git archive main | tar -x -C /tmp/base``): its ``client`` and ``server``
packages are served with this interpreter. The same h2load run as ``benchmarks/run.py``
(one connection, 16 streams, in-memory cache hits) goes to the baseline, to this tree with
tracing off (no ``OTEL_*``), and to this tree with ``OTEL_TRACES_EXPORTER=otlp`` exporting to
a receiver in this process; rounds interleaved, best kept. Prints the rates and the
ratios to the baseline (the goal: tracing off >= 0.97x).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def receiver() -> tuple[grpc.Server, int]:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--baseline", required=True, type=Path, help="another checkout (its client/ and server/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=20000, help="Stat calls per h2load round")
    args = parser.parse_args()
    h2 = common.ensure_h2load()
    if h2 is None:
        print("h2load missing", file=sys.stderr)
        return 1
    sink, sink_port = receiver()
    work = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
    digests = [common.digest_of(i) for i in range(1000)]
    body = work / "stat.bin"
    body.write_bytes(common.framed(common.stat_request(digests[0])))
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    servers = {
        "baseline": common.service("baseline", work, "inmemory", tree=args.baseline),
        "off": common.service("off", work, "inmemory"),
        "on": common.service("on", work, "inmemory"),
    }
    servers["on"].cmd = ["env", *(f"{k}={v}" for k, v in otel.items()), *servers["on"].cmd]
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for srv in servers.values():
            srv.start()
            asyncio.run(common.prime(srv.target, digests[:1]))
        for r in range(args.rounds):
            for name, srv in servers.items():
                res = common.H2Load(h2, srv.port, body, args.n).run()
                if res["failed"]:
                    raise RuntimeError(f"{name}: {res['failed']} failed requests")
                rates[name].append(res["rps"])
                common.say(f"round {r + 1}: Stat hit {name}: {res['rps']:.0f}/s")
    finally:
        for srv in servers.values():
            srv.stop()
        sink.stop(0)
    best = {name: max(v) for name, v in rates.items()}
    for name in ("baseline", "off", "on"):
        print(f"{name:8} {best[name]:>9,.0f} Stat hits/s  {best[name] / best['baseline']:.3f}x baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
