"""clientlb.grpc.aio: balanced grpc.aio channels against real grpcio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import grpc
import grpc.aio
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

import clientlb
import clientlb.grpc
import clientlb.grpc.aio

from ._grpc_servers import SSTREAM, SUNARY, UNARY, USTREAM, GrpcBackend, ProcessBackend, outcomes_of
from ._helpers import free_port


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds (or fail after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_request", "peak_ewma"])
def test_calls_spread_over_every_endpoint_per_strategy(backends: list[GrpcBackend],
                                                       strategy: str) -> None:
    """Each awaited call picks an endpoint: all backends serve, evenly for round_robin."""
    async def main() -> Counter[bytes]:
        async with clientlb.grpc.aio.insecure_channel([b.address for b in backends],
                                                      strategy=strategy) as channel:
            assert isinstance(channel, grpc.aio.Channel)
            call = channel.unary_unary(UNARY)
            return Counter([await call(b"x", timeout=5) for _ in range(60)])

    answers = asyncio.run(main())
    assert set(answers) == {b"b0", b"b1", b"b2"}
    if strategy == "round_robin":
        assert set(answers.values()) == {20}


def test_hash_key_callable_pins_a_request_field_to_one_endpoint(
        backends: list[GrpcBackend]) -> None:
    """A hash_key callable of the request drives ring_hash from asyncio."""
    def by_request(method: str, request: Any, metadata: Any) -> bytes:
        return bytes(request)

    async def main() -> None:
        async with clientlb.grpc.aio.insecure_channel(
                [b.address for b in backends], strategy="ring_hash",
                hash_key=by_request) as channel:
            call = channel.unary_unary(UNARY)
            first = {k: await call(k, timeout=5) for k in (b"a", b"b", b"c", b"d", b"e")}
            again = {k: await call(k, timeout=5) for k in first}
            assert first == again
            for k, owner in first.items():
                parts = [p async for p in channel.unary_stream(USTREAM)(k, timeout=5)]
                assert parts[0].split(b":")[0] == owner

    asyncio.run(main())


def test_all_four_call_shapes_and_call_objects(backends: list[GrpcBackend]) -> None:
    """Four shapes, metadata, compression, code()/trailing_metadata() on the call object."""
    async def main() -> None:
        async with clientlb.grpc.aio.insecure_channel([b.address for b in backends],
                                                      strategy="round_robin") as channel:
            unary = channel.unary_unary(UNARY)
            call = unary(b"x", timeout=5, metadata=(("k", "v"),),
                         compression=grpc.Compression.Gzip, wait_for_ready=True)
            response = await call
            assert await call.code() is grpc.StatusCode.OK
            assert dict(await call.trailing_metadata())["backend"] == response.decode()
            assert call.done() and not call.cancelled()
            assert any(b.metadata.get("k") == "v" for b in backends)
            parts = [p async for p in channel.unary_stream(USTREAM)(b"x", timeout=5)]
            assert len(parts) == 3
            assert (await channel.stream_unary(SUNARY)(iter([b"a", b"b"]), timeout=5)
                    ).endswith(b":2")
            echoed = [e async for e in channel.stream_stream(SSTREAM)(iter([b"p"]), timeout=5)]
            assert echoed[0].startswith(b"p@")
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await until(lambda: all(r.in_flight == 0 for r in channel.lb.snapshot().endpoints))

    asyncio.run(main())


def test_connect_failures_are_retried_transparently_and_killed_server_fails_no_call() -> None:
    """A dead port and a server process killed mid-run: zero failed calls at concurrency 8.

    Connect failures are retried transparently; calls cut by the kill
    (UNAVAILABLE after they were sent) are retried because the caller declared
    UNAVAILABLE retryable for this idempotent method.
    """
    dead = f"127.0.0.1:{free_port()}"
    procs = [ProcessBackend(f"p{i}") for i in range(3)]

    async def main() -> tuple[list[BaseException], list[tuple[str, clientlb.Outcome]]]:
        errors: list[BaseException] = []
        async with clientlb.grpc.aio.insecure_channel(
                [dead, *(p.address for p in procs)], strategy="round_robin",
                outlier_detection=None,  # keep the dead endpoints in rotation
                retryable_codes={grpc.StatusCode.UNAVAILABLE}) as channel:
            seen = outcomes_of(channel.lb)
            call = channel.unary_unary(UNARY)

            async def worker(n: int) -> None:
                for _ in range(n):
                    try:
                        await call(b"x", timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        errors.append(exc)

            await asyncio.gather(*(worker(10) for _ in range(8)))
            # wait_for_ready must not pin a call to the dead endpoint while others are up
            for _ in range(4):
                await call(b"x", timeout=2, wait_for_ready=True)
            killer = asyncio.get_running_loop().run_in_executor(None, procs[0].kill)
            await asyncio.gather(*(worker(10) for _ in range(8)))
            await killer
            await asyncio.gather(*(worker(5) for _ in range(8)))
        return errors, seen

    try:
        errors, seen = asyncio.run(main())
    finally:
        for p in procs:
            p.stop()
    assert errors == []
    assert {o for a, o in seen if a == dead} == {clientlb.Outcome.CONNECT_FAILURE}
    assert {o for a, o in seen if a == procs[0].address} & {
        clientlb.Outcome.CONNECT_FAILURE, clientlb.Outcome.GATEWAY_FAILURE}


def test_server_streams_are_replayed_when_their_endpoint_cannot_be_reached(
        backends: list[GrpcBackend]) -> None:
    """Server-streaming calls to dead ports go to a live endpoint (async for and read())."""
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]

    async def main() -> list[tuple[str, clientlb.Outcome]]:
        async with clientlb.grpc.aio.insecure_channel(
                [*dead, backends[0].address], strategy="round_robin",
                outlier_detection=None) as channel:
            seen = outcomes_of(channel.lb)
            stream = channel.unary_stream(USTREAM)
            for _ in range(3):
                assert len([p async for p in stream(b"x", timeout=5)]) == 3
            for _ in range(3):
                call = stream(b"x", timeout=5)
                parts = []
                while (part := await call.read()) is not grpc.aio.EOF:
                    parts.append(part)
                assert len(parts) == 3 and await call.code() is grpc.StatusCode.OK
            await until(lambda: all(r.in_flight == 0 for r in channel.lb.snapshot().endpoints))
            return seen

    seen = asyncio.run(main())
    assert {o for a, o in seen if a in dead} == {clientlb.Outcome.CONNECT_FAILURE}
    assert backends[0].count("UStream") == 6


def test_server_answering_unavailable_is_counted_failing_and_ejected(
        backends: list[GrpcBackend]) -> None:
    """UNAVAILABLE answers are gateway failures; outlier detection ejects the endpoint."""
    bad = backends[0]
    bad.status = grpc.StatusCode.UNAVAILABLE
    options: dict[str, Any] = {"strategy": "round_robin"}
    detection = getattr(clientlb, "OutlierDetection", None)
    if detection is not None:
        options["outlier_detection"] = detection(consecutive_failures=3)

    async def main() -> None:
        async with clientlb.grpc.aio.insecure_channel([b.address for b in backends],
                                                      **options) as channel:
            seen = outcomes_of(channel.lb)
            failures = 0
            for _ in range(30):
                try:
                    await channel.unary_unary(UNARY)(b"x", timeout=5)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE
                    failures += 1
            bad_outcomes = {o for a, o in seen if a == bad.address}
            assert bad_outcomes == {clientlb.Outcome.GATEWAY_FAILURE}
            if detection is not None:
                assert channel.lb.snapshot().by_address()[bad.address].state == "ejected"
                assert failures == bad.count() <= 3

    asyncio.run(main())


def test_removed_endpoint_sub_channel_is_drained_then_closed(
        backends: list[GrpcBackend]) -> None:
    """A leaving endpoint finishes its open stream, takes no new call, then its channel closes."""
    for b in backends:
        b.hold = threading.Event()

    async def main() -> None:
        lb = clientlb.LoadBalancer([b.address for b in backends], strategy="round_robin")
        async with clientlb.grpc.aio.insecure_channel(lb) as channel:
            stream = channel.unary_stream(USTREAM)(b"x", timeout=10)
            first = await stream.read()
            owner = next(b for b in backends if first.startswith(b.name.encode()))
            lb.remove(owner.address)
            assert channel.sub_channels()[owner.address] == "draining"
            answers = {await channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(6)}
            assert owner.name.encode() not in answers
            owner.hold.set()  # type: ignore[union-attr]
            rest = []
            while (part := await stream.read()) is not grpc.aio.EOF:
                rest.append(part)
            assert [p.split(b":")[0] for p in rest] == [owner.name.encode()] * 2
            await until(lambda: owner.address not in channel.sub_channels())
        await lb.aclose()

    asyncio.run(main())


class _Recorder(grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                grpc.aio.UnaryStreamClientInterceptor):
    """Both kinds in one object, as grpc.aio allows."""

    def __init__(self) -> None:
        self.methods: list[bytes] = []

    def _details(self, details: Any) -> Any:
        self.methods.append(details.method)
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-intercepted", "yes"))
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any,
                                     request: Any) -> Any:
        return await continuation(self._details(details), request)


class _Answer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Answers from a cache without calling: the interceptor returns a response."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if request == b"cached":
            return b"from-cache"
        return await continuation(details, request)  # the call itself: metadata flows


def test_aio_interceptors_run_once_per_call_above_the_retries(
        backends: list[GrpcBackend]) -> None:
    """interceptors= wrap the balanced call: once per call even when a dead endpoint is
    retried beneath them, once per stream, and an interceptor may answer by itself."""
    recorder = _Recorder()
    dead = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        async with clientlb.grpc.aio.insecure_channel(
                [dead, *(b.address for b in backends)], strategy="round_robin",
                outlier_detection=None, interceptors=[recorder, _Answer()]) as channel:
            call = channel.unary_unary(UNARY)
            answers = {await call(b"x", timeout=5) for _ in range(8)}
            assert answers == {b"b0", b"b1", b"b2"}
            one = call(b"x", timeout=5)
            assert await one.code() is grpc.StatusCode.OK
            assert dict(await one.trailing_metadata())["backend"] in {"b0", "b1", "b2"}
            assert await one in answers and one.done()
            assert await call(b"cached") == b"from-cache"
            channel.lb.remove(dead)  # streams are not retried: keep this one off the dead port
            parts = [p async for p in channel.unary_stream(USTREAM)(b"x", timeout=5)]
            assert len(parts) == 3

    asyncio.run(main())
    assert recorder.methods == [UNARY.encode()] * 10 + [USTREAM.encode()]
    assert all(b.metadata.get("x-intercepted") == "yes" for b in backends)


def test_tls_verifies_the_logical_name_while_connecting_to_ips() -> None:
    """trustme certificate for users.internal accepted on 127.0.0.1; a wrong name refused."""
    ca = trustme.CA()
    cert = ca.issue_cert("users.internal")
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())])
    servers = [GrpcBackend(f"t{i}", credentials=creds) for i in range(2)]
    client_creds = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    addresses = [s.address for s in servers]

    async def main() -> None:
        async with clientlb.grpc.aio.secure_channel(
                addresses, client_creds, server_name="users.internal",
                strategy="round_robin") as channel:
            answers = {await channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(4)}
            assert answers == {b"t0", b"t1"}
        async with clientlb.grpc.aio.secure_channel(
                addresses, client_creds, server_name="other.internal",
                transparent_retries=0) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(UNARY)(b"x", timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    try:
        asyncio.run(main())
    finally:
        for s in servers:
            s.stop()


def test_hedging_answers_from_the_fast_endpoint(backends: list[GrpcBackend]) -> None:
    """A slow first attempt is overtaken by a hedge; the loser is cancelled."""
    backends[0].delay = 1.0
    hedging = clientlb.grpc.Hedging(max_attempts=2, delay=0.05)

    async def main() -> list[bytes]:
        async with clientlb.grpc.aio.insecure_channel(
                [backends[0].address, backends[1].address], strategy="round_robin",
                hedging=hedging) as channel:
            return [await channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(4)]

    assert set(asyncio.run(main())) == {b"b1"}


def test_channel_ready_get_state_and_no_endpoint_error(backends: list[GrpcBackend]) -> None:
    """channel_ready connects every endpoint; a closed balancer gives UNAVAILABLE."""
    async def main() -> None:
        async with clientlb.grpc.aio.insecure_channel([b.address for b in backends]) as channel:
            await asyncio.wait_for(channel.channel_ready(), 5)
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            assert set(channel.sub_channels()) == {b.address for b in backends}
        lb = clientlb.LoadBalancer([backends[0].address])
        channel = clientlb.grpc.aio.insecure_channel(lb)
        assert await channel.unary_unary(UNARY)(b"x", timeout=5)
        await lb.aclose()
        call = channel.unary_unary(UNARY)(b"x")
        with pytest.raises(clientlb.NoEndpointAvailable):
            await call
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        await channel.close()
        with pytest.raises(grpc.aio.UsageError):
            channel.unary_unary(UNARY)(b"x")
        assert all(row.in_flight == 0 for row in lb.snapshot().endpoints)
        assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN

    asyncio.run(main())


def test_channel_ready_waits_for_endpoints_that_arrive_later(
        backends: list[GrpcBackend]) -> None:
    """With no endpoint yet, channel_ready() waits (without spinning the loop) for one."""
    async def main() -> None:
        lb = clientlb.LoadBalancer([backends[0].address])
        await lb.await_ready()
        lb.remove(backends[0].address)
        channel = clientlb.grpc.aio.insecure_channel(lb)
        ready = asyncio.ensure_future(channel.channel_ready())
        await asyncio.sleep(0.05)  # the loop stays free while it waits
        assert not ready.done()
        lb.add(backends[1].address)
        await asyncio.wait_for(ready, 5)
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        await channel.close()
        await lb.aclose()

    asyncio.run(main())


def test_a_call_never_awaited_gives_its_slot_back(backends: list[GrpcBackend]) -> None:
    """A fire-and-forget call (never awaited) leaves nothing in flight once dropped, so its
    endpoint's sub-channel can still drain and close."""
    async def main() -> None:
        lb = clientlb.LoadBalancer([backends[0].address])
        async with clientlb.grpc.aio.insecure_channel(lb) as channel:
            call = channel.unary_unary(UNARY)(b"x", timeout=5)
            await until(lambda: backends[0].count() == 1)
            del call
            await until(lambda: channel.lb.snapshot().endpoints[0].in_flight == 0)
            lb.remove(backends[0].address)
            await until(lambda: channel.sub_channels() == {})
        await lb.aclose()

    asyncio.run(main())


def test_retryable_codes_and_hedging_skip_an_overloaded_endpoint(
        backends: list[GrpcBackend]) -> None:
    """RESOURCE_EXHAUSTED declared retryable: plain calls retry after a backoff, hedged
    calls hedge at once; both answer from the other endpoints and draw on the budget."""
    backends[0].status = grpc.StatusCode.RESOURCE_EXHAUSTED

    async def main() -> None:
        for hedging in (None, clientlb.grpc.Hedging(delay=1.0)):
            async with clientlb.grpc.aio.insecure_channel(
                    [b.address for b in backends], strategy="round_robin",
                    retryable_codes={grpc.StatusCode.RESOURCE_EXHAUSTED},
                    hedging=hedging) as channel:
                call = channel.unary_unary(UNARY)
                answers = {await call(b"x", timeout=5) for _ in range(6)}
                assert answers == {b"b1", b"b2"}
                budget = channel.lb.retry_budget
                assert budget is not None and budget.statistics()["retries"] >= 1

    asyncio.run(main())
    assert backends[0].count() >= 2


def test_endpoint_removed_while_the_loop_is_not_running_is_drained_later(
        backends: list[GrpcBackend]) -> None:
    """A diff from outside the running loop (same thread, loop paused) never raises into
    the balancer; the sub-channel closes when the loop runs again."""
    lb = clientlb.LoadBalancer([b.address for b in backends[:2]], strategy="round_robin")
    loop = asyncio.new_event_loop()
    try:
        async def start() -> Any:
            channel = clientlb.grpc.aio.insecure_channel(lb)
            for _ in range(2):
                await channel.unary_unary(UNARY)(b"x", timeout=5)
            return channel

        channel = loop.run_until_complete(start())
        assert set(channel.sub_channels()) == {backends[0].address, backends[1].address}
        lb.remove(backends[0].address)  # the loop is not running now
        loop.run_until_complete(until(
            lambda: set(channel.sub_channels()) == {backends[1].address}))
        loop.run_until_complete(channel.close())
    finally:
        loop.close()
        lb.close()
