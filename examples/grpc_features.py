"""Balanced gRPC beyond the basics: retries, hedging, TLS to a logical name, interceptors.

Starts local gRPC servers on 127.0.0.1 (the ``demo.Greeter`` of
``grpc_quickstart.py``) and shows, each in a few lines that docs/grpc.md
quotes:

* retries on another endpoint for codes declared retryable, and hedging;
* TLS where certificates name ``greeter.internal`` while the channel
  connects to 127.0.0.1 (certificates made on the fly with ``trustme``);
* ``grpc.intercept_channel`` on top of a balanced channel, and grpc.aio
  interceptors;
* balancing by hand, for code that must open its own channels.

Run: ``python examples/grpc_features.py`` (needs ``trustme`` for the TLS part).
"""

from __future__ import annotations

import asyncio
import collections
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import trustme

import clientlb
import clientlb.grpc
import clientlb.grpc.aio

METHOD = "/demo.Greeter/SayHello"


def start_server(name: str, *, status: grpc.StatusCode | None = None,
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, str]:
    def say_hello(request: str, context: grpc.ServicerContext) -> str:
        if status is not None:
            context.abort(status, f"{name} is overloaded")
        metadata = dict(context.invocation_metadata())
        return f"hello {request} from {name} (x-team={metadata.get('x-team', '-')})"

    handler = grpc.method_handlers_generic_handler("demo.Greeter", {
        "SayHello": grpc.unary_unary_rpc_method_handler(
            say_hello, request_deserializer=bytes.decode, response_serializer=str.encode),
    })
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


def hello(channel: grpc.Channel) -> Any:
    return channel.unary_unary(METHOD, request_serializer=str.encode,
                               response_deserializer=bytes.decode)


def retries_and_hedging(addresses: list[str]) -> None:
    # --8<-- [start:retries]
    channel = clientlb.grpc.insecure_channel(
        addresses,
        strategy="round_robin",
        retryable_codes={grpc.StatusCode.RESOURCE_EXHAUSTED},  # SayHello is idempotent
        hedging=clientlb.Hedging(delay=0.05, methods={"/demo.Greeter/SayHello"}),
    )
    # --8<-- [end:retries]
    with channel:
        replies = [hello(channel)("retry", timeout=5) for _ in range(6)]
        budget = channel.lb.retry_budget
        retries = budget.statistics()["retries"] if budget is not None else 0
    print(f"retries: 6 calls, {len(replies)} answered, overloaded backend skipped "
          f"({retries} retries from the budget)")


def tls() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("greeter.internal")
    server_credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())])
    servers = [start_server(f"tls-{i}", credentials=server_credentials) for i in range(2)]
    addresses = [address for _, address in servers]
    ca_pem = ca.cert_pem.bytes()
    # --8<-- [start:tls]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    channel = clientlb.grpc.secure_channel(addresses, credentials,
                                           server_name="greeter.internal")
    # --8<-- [end:tls]
    with channel:
        print("tls:", hello(channel)("tls", timeout=5).split(" (")[0])
    for server, _ in servers:
        server.stop(None).wait()


# --8<-- [start:interceptor]
class TeamHeader(grpc.UnaryUnaryClientInterceptor):
    """Adds ``x-team`` to every call's metadata."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), ("x-team", "payments")]
        return continuation(details._replace(metadata=metadata), request)
# --8<-- [end:interceptor]


class AioTeamHeader(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-team", "search"))
        return await continuation(details._replace(metadata=metadata), request)


def interceptors(addresses: list[str]) -> None:
    # --8<-- [start:intercept]
    channel = grpc.intercept_channel(clientlb.grpc.insecure_channel(addresses), TeamHeader())
    # --8<-- [end:intercept]
    print("interceptor:", hello(channel)("you", timeout=5).split("(")[1].rstrip(")"))
    channel.close()

    async def run() -> str:
        # --8<-- [start:aio_interceptors]
        async with clientlb.grpc.aio.insecure_channel(
                addresses, interceptors=[AioTeamHeader()]) as channel:
            reply: str = await hello(channel)("you", timeout=5)
        # --8<-- [end:aio_interceptors]
        return reply

    print("aio interceptor:", asyncio.run(run()).split("(")[1].rstrip(")"))


def by_hand(addresses: list[str]) -> None:
    lb = clientlb.LoadBalancer(addresses, strategy="round_robin")
    request = "by hand"
    seen = collections.Counter()
    for _ in range(4):
        # --8<-- [start:by_hand]
        with lb.pick() as p, grpc.insecure_channel(p.endpoint.address) as ch:
            reply = ch.unary_unary("/demo.Greeter/SayHello", request_serializer=str.encode,
                                   response_deserializer=bytes.decode)(request, timeout=5)
        # --8<-- [end:by_hand]
        seen[reply.split(" from ")[1].split(" ")[0]] += 1
    lb.close()
    print("by hand: 4 calls ->", dict(sorted(seen.items())))


def main() -> None:
    servers = [start_server("ok-0"), start_server("ok-1"),
               start_server("busy", status=grpc.StatusCode.RESOURCE_EXHAUSTED)]
    addresses = [address for _, address in servers]
    retries_and_hedging(addresses)
    tls()
    interceptors(addresses[:2])
    by_hand(addresses[:2])
    for server, _ in servers:
        server.stop(None).wait()


if __name__ == "__main__":
    main()
