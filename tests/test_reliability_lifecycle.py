"""Lifecycle: nothing outlives what owns it (issue 13).

* A balancer dropped without ``close()`` is collected, stops its discovery and
  its probes, and says so with a ``ResourceWarning`` — as Python's sockets and
  asyncio transports do.
* A constructor that fails releases what it had started (the balancer an
  ``HTTPTransport`` built from a target, a resolver already querying).
* Requests in flight when an httpx client (its clientlb transport) is closed
  end with an httpx exception, not a bare ``RuntimeError``, and do not count
  against the endpoint.

Real servers: the Consul emulator (it counts the queries it receives) and HTTP
backends on loopback. No sleep waits for a state: weak references, ``gc``,
and polling with a deadline.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator

import httpx
import pytest

import clientlb
from clientlb._health.manager import HealthManager
from clientlb._http.transport import TransportClosed

from ._helpers import resolver_tasks, wait_until
from ._http_backend import Backend
from .consul_emulator import ConsulEmulator

FAST = {"min_query_interval": 0.0, "wait": 1.0, "timeout": 2.0, "env": {},
        "backoff_initial": 0.05, "backoff_maximum": 0.2}


@pytest.fixture
def consul() -> Iterator[ConsulEmulator]:
    emulator = ConsulEmulator()
    emulator.register("web", "web-1", address="127.0.0.1", port=1)
    try:
        yield emulator
    finally:
        emulator.close()


def _queries(consul: ConsulEmulator) -> int:
    return len(consul.requests)


def _stays_quiet(consul: ConsulEmulator) -> bool:
    """No query reaches the agent while the service changes twice (each change would
    answer a blocking query at once and start the next one)."""
    before = _queries(consul)
    for _ in range(2):
        consul.touch("web")
        # a live resolver would ask again within min_query_interval (0): give it time
        # by waiting for something that does not happen, with a short deadline
        try:
            wait_until(lambda: _queries(consul) > before, timeout=0.3)
        except AssertionError:
            continue
        return False
    return True


def _health_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("clientlb-health-")]


def test_a_balancer_dropped_without_close_stops_discovery_and_probes_and_warns(
        consul: ConsulEmulator) -> None:
    """Collected (nothing keeps it alive), then silent: no query, no probe thread."""
    lb = clientlb.LoadBalancer(f"consul://{consul.address}/web", resolver_options=FAST,
                               health_check=clientlb.HealthCheck(kind="tcp", interval=0.05))
    assert lb.wait_ready()
    wait_until(lambda: _health_threads(), timeout=5, message="the probe thread")
    with pytest.warns(ResourceWarning, match="unclosed <LoadBalancer 'web'") as record:
        del lb  # (a probe may hold it for a moment: collect until its finalizer ran)
        wait_until(lambda: gc.collect() >= 0 and len(record) > 0, timeout=5,
                   message="the balancer to be collected")
    # the warning's source is the balancer (kept alive by the record only), now closed
    assert record[0].source.closed
    wait_until(lambda: not _health_threads(), timeout=10, message="the probe thread to end")
    wait_until(lambda: not resolver_tasks(), timeout=10, message="the resolver task to end")
    assert _stays_quiet(consul)


def test_a_balancer_dropped_inside_asyncio_stops_its_tasks_and_warns(
        consul: ConsulEmulator) -> None:
    """The same in an event loop: resolver and probes are tasks on the caller's loop."""

    async def scenario() -> None:
        lb = clientlb.LoadBalancer(f"consul://{consul.address}/web", resolver_options=FAST,
                                   health_check=clientlb.HealthCheck(kind="tcp", interval=0.05))
        assert await lb.await_ready()
        with pytest.warns(ResourceWarning, match="unclosed") as record:
            del lb  # one thread, the caller's loop: nothing else holds it
            assert len(record) == 1
        deadline = asyncio.get_running_loop().time() + 10
        while any(t.get_name().startswith("clientlb-") and not t.done()
                  for t in asyncio.all_tasks()):
            assert asyncio.get_running_loop().time() < deadline, asyncio.all_tasks()
            await asyncio.sleep(0.01)
        before = _queries(consul)
        consul.touch("web")
        await asyncio.sleep(0)  # let anything still scheduled run once
        assert _queries(consul) == before

    asyncio.run(scenario())
    assert _stays_quiet(consul)


def test_a_closed_balancer_is_collected_without_a_warning(consul: ConsulEmulator) -> None:
    """close() (or ``with``) is the normal way: no ResourceWarning then."""
    with clientlb.LoadBalancer(f"consul://{consul.address}/web", resolver_options=FAST) as lb:
        assert lb.wait_ready()
    ref = weakref.ref(lb)
    del lb
    gc.collect()  # pytest's -W error turns any warning here into a failure
    assert ref() is None


def test_httptransport_that_fails_closes_the_balancer_it_built(consul: ConsulEmulator) -> None:
    """HTTPTransport("consul://...", pool_shards=None): ConfigError, and the agent
    hears nothing more (the balancer built for it is closed)."""
    before = _queries(consul)
    for cls in (clientlb.HTTPTransport, clientlb.AsyncHTTPTransport):
        with pytest.raises(clientlb.ConfigError, match="pool_shards"):
            cls(f"consul://{consul.address}/web", pool_shards=None)
    wait_until(lambda: not resolver_tasks(), timeout=10, message="no resolver left")
    assert _queries(consul) - before <= 2  # at most the first query of each
    assert _stays_quiet(consul)


def test_grpc_channel_that_fails_closes_the_balancer_it_built(consul: ConsulEmulator) -> None:
    pytest.importorskip("grpc")
    import clientlb.grpc

    with pytest.raises(clientlb.ConfigError, match="max_attempts"):
        clientlb.grpc.insecure_channel(f"consul://{consul.address}/web", max_attempts=99)
    wait_until(lambda: not resolver_tasks(), timeout=10, message="no resolver left")
    assert _stays_quiet(consul)


def test_a_balancer_that_fails_after_starting_discovery_stops_it(
        consul: ConsulEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the resolver started (here: the probes) closes what started."""

    def broken(self: HealthManager) -> None:
        raise RuntimeError("cannot start the probes")

    monkeypatch.setattr(HealthManager, "start", broken)
    with pytest.raises(RuntimeError, match="cannot start the probes"):
        clientlb.LoadBalancer(f"consul://{consul.address}/web", resolver_options=FAST)
    gc.collect()  # the half-built balancer is closed: no ResourceWarning either
    wait_until(lambda: not resolver_tasks(), timeout=10, message="no resolver left")
    assert _stays_quiet(consul)


# -- in-flight requests of a closed transport ----------------------------------------------


@pytest.fixture
def hanging() -> Iterator[list[Backend]]:
    backends = [Backend("a"), Backend("b")]
    for b in backends:
        b.hang = threading.Event()
    try:
        yield backends
    finally:
        for b in backends:
            b.close()


def test_requests_in_flight_when_the_client_closes_end_with_an_httpx_exception(
        hanging: list[Backend]) -> None:
    """Sync: each request in flight ends with httpx.TransportError (TransportClosed),
    is not retried, and no endpoint is blamed for it."""
    with clientlb.LoadBalancer([b.address for b in hanging]) as lb:
        client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://svc")
        results: list[BaseException | httpx.Response] = []

        def call() -> None:
            try:
                results.append(client.get("/x", timeout=10))
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(len(b.requests) for b in hanging) == 4, timeout=5,
                   message="4 requests at the backends")
        client.close()
        for b in hanging:
            assert b.hang is not None
            b.hang.set()
        for t in threads:
            t.join(10)
        assert len(results) == 4
        for r in results:
            assert isinstance(r, httpx.TransportError), r
            assert isinstance(r, TransportClosed) and "closed" in str(r)
        assert sum(len(b.requests) for b in hanging) == 4  # no retry went out
        rows = lb.snapshot().endpoints
        assert all(row.state == "healthy" and row.failures == 0 for row in rows), rows
        assert lb.in_flight() == 0


def test_async_requests_in_flight_when_the_client_closes_end_with_an_httpx_exception(
        hanging: list[Backend]) -> None:
    async def scenario() -> None:
        async with clientlb.LoadBalancer([b.address for b in hanging]) as lb:
            client = httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb),
                                       base_url="http://svc")
            calls = [asyncio.create_task(client.get("/x", timeout=10)) for _ in range(4)]
            while sum(len(b.requests) for b in hanging) < 4:
                await asyncio.sleep(0.01)
            await client.aclose()
            for b in hanging:
                assert b.hang is not None
                b.hang.set()
            results = await asyncio.gather(*calls, return_exceptions=True)
            for r in results:
                assert isinstance(r, TransportClosed), r
                assert isinstance(r, httpx.TransportError)
            assert all(row.failures == 0 for row in lb.snapshot().endpoints)
            assert lb.in_flight() == 0

    asyncio.run(scenario())


def test_a_request_through_a_closed_transport_is_an_httpx_exception() -> None:
    """The transport closed while its client is still open: TransportClosed, with the request."""
    with clientlb.LoadBalancer(["127.0.0.1:9"]) as lb:
        transport = clientlb.HTTPTransport(lb)
        client = httpx.Client(transport=transport, base_url="http://svc")
        transport.close()
        with pytest.raises(TransportClosed, match="the transport is closed") as info:
            client.get("/x")
        assert info.value.request.url.path == "/x"
        client.close()
