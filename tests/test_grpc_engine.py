"""clientlb.grpc on the call engine: one policy per logical call, sync and aio alike.

Real grpcio servers on 127.0.0.1 (tests/_grpc_servers.py); every test runs the
same scenario through the sync and the grpc.aio channel, since both drive the
same state machine (clientlb/grpc/_policy.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest

import clientlb
import clientlb.grpc
import clientlb.grpc.aio

from ._grpc_servers import SSTREAM, SUNARY, UNARY, USTREAM, GrpcBackend, outcomes_of
from ._helpers import free_port, wait_until

KINDS = ["sync", "aio"]


def run(kind: str, lb: clientlb.LoadBalancer, body: Callable[[Any, bool], Any],
        **options: Any) -> Any:
    """Run ``body(channel, is_aio)`` on a sync or an aio channel over ``lb``; ``body``
    returns a value, or a coroutine for aio."""
    if kind == "sync":
        with clientlb.grpc.insecure_channel(lb, **options) as channel:
            return body(channel, False)

    async def main() -> Any:
        async with clientlb.grpc.aio.insecure_channel(lb, **options) as channel:
            return await body(channel, True)

    return asyncio.run(main())


def unary_results(channel: Any, aio: bool, n: int) -> Any:
    """``n`` unary calls: the list of answers, with ``None`` for each RpcError."""
    call = channel.unary_unary(UNARY)

    def one() -> bytes | None:
        try:
            return call(b"x", timeout=5)  # type: ignore[no-any-return]
        except grpc.RpcError:
            return None

    async def one_aio() -> bytes | None:
        try:
            return await call(b"x", timeout=5)  # type: ignore[no-any-return]
        except grpc.RpcError:
            return None

    if not aio:
        return [one() for _ in range(n)]

    async def many() -> list[bytes | None]:
        return [await one_aio() for _ in range(n)]

    return many()


@pytest.mark.parametrize("kind", KINDS)
def test_retry_switched_off_live_reaches_a_channel_built_before(
        backends: list[GrpcBackend], kind: str) -> None:
    """Registry.update(retry=None) stops the retries of an existing channel at once, and a
    new RetryPolicy turns them back on: the policy is read per call, not copied."""
    bad, good = backends[0], backends[1]
    bad.status = grpc.StatusCode.UNAVAILABLE
    with clientlb.Registry(telemetry=False) as registry:
        lb = registry.create("svc", [bad.address, good.address], strategy="round_robin",
                             outlier_detection=None)

        def body(channel: Any, aio: bool) -> Any:
            async def steps() -> list[list[bytes | None]]:
                out = [await unary_results(channel, True, 6)]
                registry.update("svc", retry=None)
                out.append(await unary_results(channel, True, 6))
                registry.update("svc", retry=clientlb.RetryPolicy())
                out.append(await unary_results(channel, True, 6))
                return out

            if aio:
                return steps()
            out = [unary_results(channel, False, 6)]
            registry.update("svc", retry=None)
            out.append(unary_results(channel, False, 6))
            registry.update("svc", retry=clientlb.RetryPolicy())
            out.append(unary_results(channel, False, 6))
            return out

        before, off, on = run(kind, lb, body, retryable_codes={grpc.StatusCode.UNAVAILABLE})
    assert before == [b"b1"] * 6
    assert off.count(None) == 3 and off.count(b"b1") == 3  # round robin: every other call
    assert on == [b"b1"] * 6


@pytest.mark.parametrize("kind", KINDS)
def test_an_endpoint_that_cannot_connect_is_one_connect_failure_for_every_call_shape(
        backends: list[GrpcBackend], kind: str) -> None:
    """A dead port, client streams then unary calls: the dead endpoint's only outcome is
    CONNECT_FAILURE (never CANCELLED for a skip, sync as aio), and no call fails."""
    dead = f"127.0.0.1:{free_port()}"
    lb = clientlb.LoadBalancer([dead, backends[0].address], strategy="round_robin",
                               outlier_detection=None)
    seen = outcomes_of(lb)

    def body(channel: Any, aio: bool) -> Any:
        sunary = channel.stream_unary(SUNARY)

        async def steps() -> list[Any]:
            out = [await sunary(iter([b"a"]), timeout=5) for _ in range(4)]
            return out + await unary_results(channel, True, 4)  # type: ignore[no-any-return]

        if aio:
            return steps()
        return [sunary(iter([b"a"]), timeout=5) for _ in range(4)] + unary_results(
            channel, False, 4)

    answers = run(kind, lb, body)
    lb.close()
    assert answers == [b"b0:1"] * 4 + [b"b0"] * 4
    assert {o for a, o in seen if a == dead} == {clientlb.Outcome.CONNECT_FAILURE}


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_shape_deposits_once_in_the_retry_budget(
        backends: list[GrpcBackend], kind: str) -> None:
    """Server-streaming (and client-streaming) calls deposit in the budget they may draw on:
    one deposit per logical call, whatever its shape or its attempts."""
    lb = clientlb.LoadBalancer([b.address for b in backends])

    def body(channel: Any, aio: bool) -> Any:
        ustream = channel.unary_stream(USTREAM)
        sunary = channel.stream_unary(SUNARY)

        async def steps() -> None:
            for _ in range(3):
                assert len([p async for p in ustream(b"x", timeout=5)]) == 3
            for _ in range(2):
                await sunary(iter([b"a"]), timeout=5)

        if aio:
            return steps()
        for _ in range(3):
            assert len(list(ustream(b"x", timeout=5))) == 3
        for _ in range(2):
            sunary(iter([b"a"]), timeout=5)
        return None

    run(kind, lb, body)
    budget = lb.retry_budget
    assert budget is not None and budget.statistics()["requests"] == 5
    lb.close()


@pytest.mark.parametrize("kind", KINDS)
def test_client_and_bidi_streams_never_fail_with_one_dead_endpoint_of_four(
        backends: list[GrpcBackend], kind: str) -> None:
    """300 client-streaming and 300 bidi calls over 3 live endpoints and a dead port: none
    fails, as none does on grpcio's own round_robin (it only sends to READY sub-channels)."""
    dead = f"127.0.0.1:{free_port()}"
    lb = clientlb.LoadBalancer([dead, *(b.address for b in backends)], strategy="round_robin",
                               outlier_detection=None)

    def body(channel: Any, aio: bool) -> Any:
        sunary = channel.stream_unary(SUNARY)
        bidi = channel.stream_stream(SSTREAM)
        failures: list[BaseException] = []

        async def steps() -> list[BaseException]:
            for _ in range(300):
                try:
                    await sunary(iter([b"a"]), timeout=5)
                    assert [p[:2] async for p in bidi(iter([b"p"]), timeout=5)] == [b"p@"]
                except grpc.RpcError as exc:
                    failures.append(exc)
            return failures

        if aio:
            return steps()
        for _ in range(300):
            try:
                sunary(iter([b"a"]), timeout=5)
                assert [p[:2] for p in bidi(iter([b"p"]), timeout=5)] == [b"p@"]
            except grpc.RpcError as exc:
                failures.append(exc)
        return failures

    assert run(kind, lb, body) == []
    lb.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_unary_call_is_cancelled_and_done_at_once(
        backends: list[GrpcBackend], kind: str) -> None:
    """cancel() on a call in progress: cancelled() and done() are True right away, as on
    grpcio's own calls; the endpoint is not blamed."""
    backends[0].delay = 2.0
    lb = clientlb.LoadBalancer([backends[0].address])
    seen = outcomes_of(lb)

    def body(channel: Any, aio: bool) -> Any:
        unary = channel.unary_unary(UNARY)

        async def steps() -> None:
            call = unary(b"x", timeout=5)
            done: list[Any] = []
            call.add_done_callback(done.append)
            while backends[0].count() < 1:
                await asyncio.sleep(0.01)
            assert call.cancel()
            assert call.cancelled() and call.done()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert done == [call]

        if aio:
            return steps()
        future = unary.future(b"x", timeout=5)
        wait_until(lambda: backends[0].count() == 1, timeout=5, message="call arrived")
        assert future.cancel()
        assert future.cancelled() and future.done()
        assert future.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        return None

    run(kind, lb, body)
    wait_until(lambda: seen, timeout=5, message="the attempt's outcome")
    assert seen == [(backends[0].address, clientlb.Outcome.CANCELLED)]
    lb.close()



@pytest.mark.parametrize("kind", KINDS)
def test_an_endpoint_that_comes_back_is_ready_again_through_its_sub_channel(
        backends: list[GrpcBackend], kind: str) -> None:
    """A dead endpoint is left out of picks; once a server listens on its port again, the
    channel's connect probe (its sub-channel READY) puts it back, streams included."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    lb = clientlb.LoadBalancer([address, backends[0].address], strategy="round_robin",
                               outlier_detection=None)
    revived: list[GrpcBackend] = []

    def connectivity() -> str:
        return lb.snapshot().by_address()[address].connectivity

    def revive() -> None:
        revived.append(GrpcBackend("revived", port=port))

    def body(channel: Any, aio: bool) -> Any:
        sunary = channel.stream_unary(SUNARY)

        async def steps() -> set[bytes]:
            await unary_results(channel, True, 2)
            assert connectivity() != "ready"
            revive()
            while connectivity() != "ready":
                await asyncio.sleep(0.02)
            return {await sunary(iter([b"a"]), timeout=5) for _ in range(6)}

        if aio:
            return steps()
        unary_results(channel, False, 2)
        assert connectivity() != "ready"
        revive()
        wait_until(lambda: connectivity() == "ready", timeout=10, message="probe succeeded")
        return {sunary(iter([b"a"]), timeout=5) for _ in range(6)}

    try:
        answers = run(kind, lb, body)
    finally:
        lb.close()
        for server in revived:
            server.stop()
    assert answers == {b"b0:1", b"revived:1"}


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_bounds_the_whole_call_across_its_retries(
        backends: list[GrpcBackend], kind: str) -> None:
    """timeout= is the logical call's deadline: attempts that each take 0.3 s and are
    retried (UNAVAILABLE declared retryable, 5 attempts) end the call within about 0.6 s."""
    for b in backends:
        b.delay = 0.3
        b.status = grpc.StatusCode.UNAVAILABLE
    lb = clientlb.LoadBalancer([b.address for b in backends], outlier_detection=None)

    def body(channel: Any, aio: bool) -> Any:
        unary = channel.unary_unary(UNARY)

        async def one() -> float:
            start = time.monotonic()
            with pytest.raises(grpc.RpcError):
                await unary(b"x", timeout=0.6)
            return time.monotonic() - start

        if aio:
            return one()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError):
            unary(b"x", timeout=0.6)
        return time.monotonic() - start

    elapsed = run(kind, lb, body, retryable_codes={grpc.StatusCode.UNAVAILABLE},
                  max_attempts=5)
    lb.close()
    assert 0.3 <= elapsed < 1.2
    assert sum(b.count() for b in backends) <= 3
