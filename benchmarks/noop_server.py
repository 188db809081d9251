"""The baseline: a no-op ``descriptor.v1.BlobDescriptorService/Stat`` on the same server model.

Same grpc.aio server, same raw-bytes generic handler shape as the real servicer, but
the handler returns a fixed serialized ``StatResponse`` without looking at the
request. Prints ``listening on HOST:PORT`` once ready; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.rpcs import SERVICE


async def serve(addr: str) -> None:
    response = pb.StatResponse(
        descriptor=pb.Descriptor(media_type="application/octet-stream", digest="sha256:" + "a" * 64, size=1234)
    ).SerializeToString()

    async def stat(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return response

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Stat": grpc.unary_unary_rpc_method_handler(stat)}),)
    )
    port = server.add_insecure_port(addr)
    await server.start()
    print(f"noop servicer listening on {addr.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--addr", default="127.0.0.1:0")
    asyncio.run(serve(parser.parse_args().addr))


if __name__ == "__main__":
    main()
