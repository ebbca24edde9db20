"""ORCA over gRPC: the server interceptors emit the trailers, the client hook reads them.

Real grpcio servers (sync and grpc.aio) on 127.0.0.1 with clientlb's interceptors, called
through plain grpcio channels; each call's trailing metadata goes through
``record_trailers`` — the hook the balanced gRPC channels call when an attempt ends —
and weighted_round_robin balances by what the servers report.

grpcio's C core keeps the standard trailer ``endpoint-load-metrics-bin`` to itself (it is
never in a Python client's trailing metadata): the interceptors also send the report as
``endpoint-load-metrics``, which is what the hook reads from grpcio.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

import clientlb
import clientlb.grpc
import clientlb.grpc.aio
from clientlb import orca
from clientlb._engine.call import Completion
from clientlb._engine.orca import HEADER, TRAILER, parse_header, record_trailers

from ._helpers import closing

UNARY = "/demo.Load/Unary"
STREAM = "/demo.Load/Stream"
FAIL = "/demo.Load/Fail"


def report_of(trailing_metadata: Any) -> orca.LoadReport:
    values = [v for k, v in trailing_metadata if k == HEADER]
    assert len(values) == 1, trailing_metadata
    return parse_header(values[0])


class SyncBackend:
    """A grpcio server whose utilization grows with its qps: ``cost`` per request per second."""

    def __init__(self, name: str, cost: float) -> None:
        self.name = name
        self.cost = cost
        self.metrics = orca.ServerMetrics(cpu=False)
        self.metrics.set_application_utilization(lambda: self.cost * self.metrics.qps())
        self.metrics.set_named_metric("backend_id", 7)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.set_trailing_metadata((("backend", self.name),))
            orca.call_metrics().set_request_cost("bytes", len(request))
            return self.name.encode()

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            orca.call_metrics().set_named_metric("chunks", 3)
            for i in range(3):
                yield f"{self.name}:{i}".encode()

        def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy")

        handler = grpc.method_handlers_generic_handler("demo.Load", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(4),
                                  interceptors=[orca.OrcaServerInterceptor(self.metrics)])
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
        self.channel = grpc.insecure_channel(self.address)

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(None)


@pytest.fixture
def sync_backends() -> Iterator[list[SyncBackend]]:
    started = [SyncBackend("small", 0.004), SyncBackend("large", 0.001)]
    yield started
    for b in started:
        b.stop()


def test_the_interceptor_sends_a_report_in_the_trailer_next_to_the_handlers(
        sync_backends: list[SyncBackend]) -> None:
    """Unary: the handler's own trailer stays, the report carries its call metrics."""
    backend = sync_backends[0]
    response, call = backend.channel.unary_unary(UNARY).with_call(b"12345")
    assert response == b"small"
    trailers = call.trailing_metadata()
    assert ("backend", "small") in [(k, v) for k, v in trailers]
    report = report_of(trailers)
    assert report.request_cost == {"bytes": 5.0}
    assert report.named_metrics == {"backend_id": 7.0}
    assert report.rps_fractional > 0 and report.application_utilization > 0


def test_grpcio_keeps_the_standard_trailer_to_itself(sync_backends: list[SyncBackend]
                                                     ) -> None:
    """The server sends endpoint-load-metrics-bin (checked on the wire in the interceptor's
    own test below), but a grpcio client never sees it: the reason for the second trailer.
    If this fails, grpcio started passing it through: the hook already reads it first."""
    _, call = sync_backends[0].channel.unary_unary(UNARY).with_call(b"")
    keys = [k for k, _ in call.trailing_metadata()]
    assert TRAILER not in keys and HEADER in keys


def test_the_interceptor_sends_the_standard_binary_trailer_on_the_wire(
        sync_backends: list[SyncBackend]) -> None:
    """Read with a raw HTTP/2 client (h2): both trailers are there, and the binary one is a
    serialized OrcaLoadReport (what gRPC's C++, Java and Go clients read)."""
    import base64
    import socket

    import h2.connection
    import h2.events

    host, port = sync_backends[0].address.rsplit(":", 1)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", UNARY),
                          (":authority", "demo"), ("content-type", "application/grpc"),
                          ("te", "trailers")])
    conn.send_data(1, b"\x00\x00\x00\x00\x02ab", end_stream=True)
    trailers: dict[bytes, bytes] = {}
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "connection closed before the trailers"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
    assert trailers[b"grpc-status"] == b"0"
    binary = orca.parse_binary(base64.b64decode(trailers[TRAILER.encode()] + b"=="))
    assert binary == parse_header(trailers[HEADER.encode()])
    assert binary.request_cost == {"bytes": 2.0}


def test_a_streaming_call_gets_its_report_after_its_last_message(
        sync_backends: list[SyncBackend]) -> None:
    backend = sync_backends[0]
    call = backend.channel.unary_stream(STREAM)(b"")
    assert list(call) == [b"small:0", b"small:1", b"small:2"]
    assert report_of(call.trailing_metadata()).named_metrics == {"backend_id": 7.0,
                                                                 "chunks": 3.0}


def test_an_aborted_call_still_carries_a_report_and_counts_as_an_error(
        sync_backends: list[SyncBackend]) -> None:
    backend = sync_backends[0]
    with pytest.raises(grpc.RpcError) as info:
        backend.channel.unary_unary(FAIL)(b"")
    call: Any = info.value
    assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert report_of(call.trailing_metadata()).eps > 0


def test_the_hook_ignores_calls_without_a_report_and_bad_ones() -> None:
    lb = closing(clientlb.LoadBalancer(["127.0.0.1:1"], strategy="weighted_round_robin"))
    record_trailers(Completion(lb.pick()), None)
    record_trailers(Completion(lb.pick()), (("backend", "x"),))
    record_trailers(Completion(lb.pick()), ((TRAILER, b"\x0a\x05"),))
    record_trailers(Completion(lb.pick()), ((HEADER, "TEXT eps=x"),))
    assert orca.statistics(lb) == {"reports": 0, "malformed": 2, "unsupported": 0}
    record_trailers(Completion(lb.pick()), ((HEADER, "TEXT eps=1"), (TRAILER, b"\x39" + bytes(
        [0, 0, 0, 0, 0, 0, 0xF0, 0x3F]))))  # the standard trailer wins when present
    state = lb.state_of("127.0.0.1:1")
    assert state is not None and state.load_report.latest.eps == 1.0
    assert orca.statistics(lb)["reports"] == 1


def balanced_calls(lb: clientlb.LoadBalancer, channels: dict[str, grpc.Channel],
                   n: int) -> collections.Counter[str]:
    """What a balanced channel does per call: pick, call, read the trailer, report."""
    served: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        completion = Completion(lb.pick())
        response, call = channels[completion.address].unary_unary(UNARY).with_call(b"x")
        record_trailers(completion, call.trailing_metadata())
        completion.finish()
        served[response.decode()] += 1
    return served


def wrr_lb(addresses: list[str]) -> clientlb.LoadBalancer:
    return clientlb.LoadBalancer(
        addresses, outlier_detection=None,
        strategy=clientlb.WeightedRoundRobin(blackout_period=0, weight_update_period=0.1))


def test_sync_grpc_calls_balance_by_the_reported_capacity(
        sync_backends: list[SyncBackend]) -> None:
    """The large backend reports a quarter of the small one's utilization per request: once
    the reports are read, it takes about 4 calls in 5."""
    from ._helpers import wait_until

    channels = {b.address: b.channel for b in sync_backends}
    with wrr_lb(list(channels)) as lb:
        wait_until(lambda: balanced_calls(lb, channels, 40)["large"] >= 28, timeout=30,
                   interval=0.1, message="traffic to follow the reports")
        weights = {e.address: e.load_weight for e in lb.snapshot().endpoints}
        small, large = (weights[b.address] or 0.0 for b in sync_backends)
        assert large == pytest.approx(4 * small, rel=0.3)
        assert orca.statistics(lb)["malformed"] == 0


class AioBackend:
    """The grpc.aio twin of SyncBackend (coroutine and async-generator handlers)."""

    def __init__(self, name: str, cost: float) -> None:
        self.name = name
        self.cost = cost
        self.metrics = orca.ServerMetrics(cpu=False)
        self.metrics.set_application_utilization(lambda: self.cost * self.metrics.qps())

    async def start(self) -> None:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            orca.call_metrics().set_request_cost("bytes", len(request))
            return self.name.encode()

        async def stream(request: bytes, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[bytes]:
            for i in range(2):
                yield f"{self.name}:{i}".encode()

        handler = grpc.method_handlers_generic_handler("demo.Load", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        })
        self.server = grpc.aio.server(
            interceptors=[orca.AioOrcaServerInterceptor(self.metrics)])
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(self.address)

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)


def test_aio_grpc_calls_balance_by_the_reported_capacity() -> None:
    """grpc.aio server and channels: trailers on unary and streaming calls, and the
    balancer's weights follow the reported capacity."""

    async def main() -> None:
        backends = [AioBackend("small", 0.004), AioBackend("large", 0.001)]
        for b in backends:
            await b.start()
        try:
            call = backends[0].channel.unary_stream(STREAM)(b"")
            assert [m async for m in call] == [b"small:0", b"small:1"]
            assert isinstance(report_of(await call.trailing_metadata()), orca.LoadReport)

            channels = {b.address: b.channel for b in backends}
            lb = wrr_lb(list(channels))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            async with lb:
                await lb.await_ready()
                while True:
                    served: collections.Counter[str] = collections.Counter()
                    for _ in range(40):
                        completion = Completion(lb.pick())
                        unary = channels[completion.address].unary_unary(UNARY)(b"xy")
                        served[(await unary).decode()] += 1
                        trailers = await unary.trailing_metadata()
                        record_trailers(completion, trailers)
                        completion.finish()
                    if served["large"] >= 28:
                        break
                    assert loop.time() < deadline, served
                    await asyncio.sleep(0.1)
                report = report_of(trailers)
                assert report.request_cost == {"bytes": 2.0} and report.rps_fractional > 0
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


# -- the balanced channels (clientlb.grpc) read the trailers themselves ----------------------


def wrr() -> clientlb.WeightedRoundRobin:
    return clientlb.WeightedRoundRobin(blackout_period=0, weight_update_period=0.1)


def test_sync_balanced_channel_follows_the_reported_capacity(
        sync_backends: list[SyncBackend]) -> None:
    """clientlb.grpc.insecure_channel with weighted_round_robin: blocking, with_call, future
    and server-streaming calls all feed the weights; the large backend ends up with about
    4 calls in 5."""
    from ._helpers import wait_until

    small, large = sync_backends
    with clientlb.grpc.insecure_channel([small.address, large.address], strategy=wrr(),
                                        outlier_detection=None) as channel:
        unary = channel.unary_unary(UNARY)
        stream = channel.unary_stream(STREAM)

        def shifted() -> bool:
            served: collections.Counter[str] = collections.Counter()
            for i in range(40):
                if i % 4 == 0:
                    response, _call = unary.with_call(b"x")
                elif i % 4 == 1:
                    response = unary.future(b"x").result()
                elif i % 4 == 2:
                    response = next(iter(stream(b""))).split(b":")[0]
                else:
                    response = unary(b"x")
                served[response.decode()] += 1
            return served["large"] >= 28

        wait_until(shifted, timeout=30, interval=0.1, message="traffic to follow the reports")
        lb = channel.lb
        weights = {e.address: e.load_weight or 0.0 for e in lb.snapshot().endpoints}
        assert weights[large.address] == pytest.approx(4 * weights[small.address], rel=0.35)
        stats = orca.statistics(lb)
        assert stats["reports"] > 0 and stats["malformed"] == 0
        with pytest.raises(grpc.RpcError):
            channel.unary_unary(FAIL)(b"")  # a failed call's trailer is read too
        assert orca.statistics(lb)["reports"] > stats["reports"]


def test_aio_balanced_channel_follows_the_reported_capacity() -> None:
    """clientlb.grpc.aio.insecure_channel with weighted_round_robin: unary and
    server-streaming calls feed the weights."""

    async def main() -> None:
        backends = [AioBackend("small", 0.004), AioBackend("large", 0.001)]
        for b in backends:
            await b.start()
        try:
            async with clientlb.grpc.aio.insecure_channel(
                    [b.address for b in backends], strategy=wrr(),
                    outlier_detection=None) as channel:
                unary = channel.unary_unary(UNARY)
                stream = channel.unary_stream(STREAM)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while True:
                    served: collections.Counter[str] = collections.Counter()
                    for i in range(40):
                        if i % 4 == 3:
                            messages = [m async for m in stream(b"")]
                            served[messages[0].split(b":")[0].decode()] += 1
                        else:
                            served[(await unary(b"xy")).decode()] += 1
                    if served["large"] >= 28:
                        break
                    assert loop.time() < deadline, served
                    await asyncio.sleep(0.1)
                assert orca.statistics(channel.lb)["malformed"] == 0
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_channels_do_not_read_trailers_for_other_strategies(
        sync_backends: list[SyncBackend]) -> None:
    with clientlb.grpc.insecure_channel([b.address for b in sync_backends],
                                        strategy="round_robin") as channel:
        for _ in range(4):
            channel.unary_unary(UNARY)(b"x")
        assert orca.statistics(channel.lb)["reports"] == 0
