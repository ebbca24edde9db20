"""Balanced gRPC in a few lines: clientlb.grpc and clientlb.grpc.aio against local servers.

Starts three gRPC servers on 127.0.0.1 (a ``demo.Greeter/SayHello`` method
served by generic handlers, plus the standard ``grpc.health.v1`` service),
then:

1. spreads sync calls over them with ``clientlb.grpc.insecure_channel``;
2. calls them through a protoc-generated stub (``grpc.health.v1``);
3. stops one server and keeps calling: no call fails;
4. does the same from asyncio with ``clientlb.grpc.aio``, 30 calls at once.

Run: ``python examples/grpc_quickstart.py``
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import clientlb.grpc
import clientlb.grpc.aio


def start_server(name: str) -> tuple[grpc.Server, str]:
    def say_hello(request: str, context: grpc.ServicerContext) -> str:
        return f"hello {request} from {name}"

    greeter = grpc.method_handlers_generic_handler("demo.Greeter", {
        "SayHello": grpc.unary_unary_rpc_method_handler(
            say_hello, request_deserializer=bytes.decode, response_serializer=str.encode),
    })
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((greeter,))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def main() -> None:
    servers = [start_server(f"backend-{i}") for i in range(3)]
    addresses = [address for _, address in servers]

    # --8<-- [start:sync]
    # 1. A balanced channel is a grpc.Channel: use it as you would any other.
    channel = clientlb.grpc.insecure_channel(addresses, strategy="round_robin")
    say_hello = channel.unary_unary("/demo.Greeter/SayHello",
                                    request_serializer=str.encode,
                                    response_deserializer=bytes.decode)
    replies = Counter(say_hello("world", timeout=5).rsplit(" ", 1)[1] for _ in range(9))
    print("sync: 9 calls ->", dict(sorted(replies.items())))

    # 2. Generated stubs take it unchanged.
    stub = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    # --8<-- [end:sync]
    print("health stub:", health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    # 3. A server goes away: its connect failures are retried on the others.
    servers[0][0].stop(None).wait()
    failed = 0
    for _ in range(12):
        try:
            say_hello("again", timeout=5)
        except grpc.RpcError:
            failed += 1
    print(f"after stopping backend-0: 12 calls, {failed} failed")
    channel.close()

    # 4. The same from asyncio.
    # --8<-- [start:aio]
    async def run_aio() -> Counter[str]:
        async with clientlb.grpc.aio.insecure_channel(addresses[1:]) as aio_channel:
            hello = aio_channel.unary_unary("/demo.Greeter/SayHello",
                                            request_serializer=str.encode,
                                            response_deserializer=bytes.decode)
            answers = await asyncio.gather(*(hello("aio", timeout=5) for _ in range(30)))
            return Counter(a.rsplit(" ", 1)[1] for a in answers)
    # --8<-- [end:aio]

    print("aio: 30 concurrent calls ->", dict(sorted(asyncio.run(run_aio()).items())))
    for server, _ in servers[1:]:
        server.stop(None).wait()


if __name__ == "__main__":
    main()
