"""Health against real servers on 127.0.0.1: HTTP backends that fail and recover,
/healthz probes (HTTP, HTTPS with the logical name, TCP, grpc.health.v1), panic.

Ejection timing uses a FakeClock (the servers are real, the ejection clock is
not); probe scheduling is real time with short intervals and ``wait_until``.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures

import httpx
import pytest

import clientlb
from clientlb import HealthCheck, LoadBalancer, Outcome, OutlierDetection

from ._helpers import FakeClock, HTTPBackend, free_port, wait_until
from ._http_backend import Backend

FAST = dict(interval=0.05, timeout=1.0, jitter=0.0, unhealthy_threshold=2, healthy_threshold=2)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0, trust_env=False) as c:
        yield c


def served(backend: HTTPBackend) -> int:
    """Requests the backend served, probes excluded."""
    return sum(1 for _, path, _ in list(backend.requests) if path != "/healthz")


def call(lb: LoadBalancer, client: httpx.Client) -> int:
    """One request through a pick, reporting the outcome by hand (plain httpx)."""
    with lb.pick() as p:
        response = client.get(f"http://{p.endpoint.address}/work")
        p.done(Outcome.FAILURE if response.status_code >= 500 else Outcome.SUCCESS)
        return response.status_code


def test_backend_answering_500_is_ejected_within_a_few_requests_and_comes_back(
        http_backends: list[HTTPBackend], client: httpx.Client, clock: FakeClock) -> None:
    b0 = http_backends[0]
    with LoadBalancer([b.address for b in http_backends], strategy="round_robin",
                      clock=clock, rng=random.Random(3)) as lb:
        b0.status = 500
        statuses = [call(lb, client) for _ in range(60)]
        assert served(b0) == 5  # consecutive_failures=5, then ejected
        assert statuses.count(500) == 5
        assert lb.snapshot().by_address()[b0.address].state == "ejected"
        b0.status = 200
        before = served(b0)
        clock.advance(30)  # base_ejection_time
        assert all(call(lb, client) == 200 for _ in range(30))
        assert served(b0) - before == 10  # its round-robin share again
        assert lb.snapshot().by_address()[b0.address].state == "healthy"


def test_http_transport_outcomes_drive_ejection(
        http_backends: list[HTTPBackend], clock: FakeClock) -> None:
    b0 = http_backends[0]
    b0.status = 503
    lb = LoadBalancer([b.address for b in http_backends], strategy="round_robin",
                      name="users", clock=clock, rng=random.Random(3), retry=None)
    with lb, httpx.Client(transport=clientlb.HTTPTransport(lb),
                          base_url="http://users") as c:
        codes = collections.Counter(c.get("/work").status_code for _ in range(60))
        assert codes[503] == 5
        assert lb.health_statistics()["ejections_consecutive_failures"] == 1


def test_backend_whose_healthz_fails_gets_no_traffic(
        http_backends: list[HTTPBackend], client: httpx.Client) -> None:
    b0, b1, b2 = http_backends
    with LoadBalancer([b.address for b in http_backends], strategy="round_robin",
                      name="users",
                      health_check=HealthCheck(**FAST)) as lb:  # type: ignore[arg-type]
        b0.health_status = 503
        wait_until(lambda: lb.snapshot().by_address()[b0.address].state == "unhealthy",
                   message="b0 unhealthy")
        before = served(b0)
        for _ in range(30):
            call(lb, client)
        assert served(b0) == before
        assert served(b1) + served(b2) >= 30
        # the probe carries the logical name as Host
        assert any(path == "/healthz" and host == "users" for _, path, host in b0.requests)
        b0.health_status = 200
        wait_until(lambda: lb.snapshot().by_address()[b0.address].state == "healthy",
                   message="b0 healthy again")
        for _ in range(30):
            call(lb, client)
        assert served(b0) > before


def test_every_backend_failing_its_probe_panics_and_spreads(
        http_backends: list[HTTPBackend], client: httpx.Client) -> None:
    with LoadBalancer([b.address for b in http_backends], strategy="round_robin",
                      health_check=HealthCheck(**FAST)) as lb:  # type: ignore[arg-type]
        for b in http_backends:
            b.health_status = 500
        wait_until(lambda: lb.mode == "panic", message="panic")
        # a static list without name=: each endpoint is asked under its own address
        b0 = http_backends[0]
        assert {host for _, path, host in b0.requests if path == "/healthz"} == {b0.address}
        before = [served(b) for b in http_backends]
        for _ in range(30):
            call(lb, client)
        assert all(served(b) > n for b, n in zip(http_backends, before, strict=True))
        assert lb.health_statistics()["panic_entered"] == 1
        for b in http_backends:
            b.health_status = 200
        wait_until(lambda: lb.mode == "normal", message="panic over")


def test_probes_run_as_asyncio_tasks_inside_a_running_loop(
        http_backends: list[HTTPBackend]) -> None:
    async def main() -> None:
        async with LoadBalancer([b.address for b in http_backends],
                                health_check=HealthCheck(**FAST)) as lb:  # type: ignore[arg-type]
            assert await lb.await_ready()
            checker = lb._health.checker
            assert checker is not None and checker._thread is None
            assert checker._task is not None
            http_backends[1].health_status = 503
            for _ in range(500):
                if lb.snapshot().by_address()[http_backends[1].address].state == "unhealthy":
                    break
                await asyncio.sleep(0.01)
            assert lb.snapshot().by_address()[http_backends[1].address].state == "unhealthy"
        assert checker._task.done()

    asyncio.run(main())


def test_tcp_probe_marks_a_closed_port_unhealthy(http_backends: list[HTTPBackend]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with LoadBalancer([http_backends[0].address, dead],
                      health_check=HealthCheck(kind="tcp", **FAST)) as lb:  # type: ignore[arg-type]
        wait_until(lambda: lb.snapshot().by_address()[dead].state == "unhealthy",
                   message="closed port unhealthy")
        assert lb.snapshot().by_address()[http_backends[0].address].state == "healthy"
        assert all(lb.pick().endpoint.address != dead for _ in range(20))


def test_https_probe_verifies_the_certificate_against_the_logical_name() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("users.internal").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    backend = Backend("tls", ssl_context=server_ctx)
    try:
        hc = HealthCheck(tls=client_ctx, **FAST)  # type: ignore[arg-type]
        with LoadBalancer([backend.address], name="users.internal", health_check=hc) as good, \
                LoadBalancer([backend.address], name="other.internal", health_check=hc) as bad:
            wait_until(lambda: good.health_statistics()["probes_passed"] >= 2,
                       message="probes pass with the right name")
            wait_until(lambda: bad.snapshot().endpoints[0].state == "unhealthy",
                       message="wrong name fails the TLS check")
            assert good.snapshot().endpoints[0].state == "healthy"
            assert any(host == "users.internal" for _, _, host, _ in backend.requests)
    finally:
        backend.close()


def test_grpc_health_probe_follows_the_serving_status() -> None:
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    servicer.set("", serving)
    try:
        address = f"127.0.0.1:{port}"
        with LoadBalancer([address], health_check=HealthCheck(kind="grpc", **FAST)) as lb:  # type: ignore[arg-type]
            wait_until(lambda: lb.health_statistics()["probes_passed"] >= 1,
                       message="SERVING passes")
            servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            wait_until(lambda: lb.snapshot().endpoints[0].state == "unhealthy",
                       message="NOT_SERVING fails")
            servicer.set("", serving)
            wait_until(lambda: lb.snapshot().endpoints[0].state == "healthy",
                       message="SERVING again")
            checker = lb._health.checker
            assert checker is not None and list(checker._grpc_channels) == [address]
            lb.remove(address)  # the probe channel of an endpoint that left is closed
            wait_until(lambda: not checker._grpc_channels, message="channel closed")
    finally:
        server.stop(None)


def test_close_stops_the_probe_thread(http_backends: list[HTTPBackend]) -> None:
    lb = LoadBalancer([http_backends[0].address],
                      health_check=HealthCheck(**FAST))  # type: ignore[arg-type]
    wait_until(lambda: lb.health_statistics()["probes_passed"] >= 1, message="a probe")
    checker = lb._health.checker
    assert checker is not None and checker._thread is not None
    lb.close()
    assert not checker._thread.is_alive()
    count = len(http_backends[0].requests)
    with socket.create_connection(("127.0.0.1", http_backends[0].port)):
        pass  # the server still works; nobody probes it any more
    assert len(http_backends[0].requests) == count


def test_connect_refused_endpoint_is_ejected_by_outlier_detection(
        http_backends: list[HTTPBackend], client: httpx.Client, clock: FakeClock) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with LoadBalancer([http_backends[0].address, dead], strategy="round_robin",
                      clock=clock, outlier_detection=OutlierDetection(
                          split_local_origin_errors=True,
                          consecutive_local_origin_failures=1)) as lb:
        errors = 0
        for _ in range(20):
            with lb.pick() as p:
                try:
                    client.get(f"http://{p.endpoint.address}/")
                except httpx.ConnectError:
                    p.done(Outcome.CONNECT_FAILURE)  # local origin: never reached it
                    errors += 1
        assert errors == 1  # then picks avoid it: it cannot be connected to
        row = lb.snapshot().by_address()[dead]
        assert (row.state, row.connectivity) == ("ejected", "transient_failure")
        assert lb.health_statistics()["ejections_consecutive_local_origin_failures"] == 1


def test_a_drained_endpoint_is_not_probed(http_backends: list[HTTPBackend]) -> None:
    b0, b1 = http_backends[0], http_backends[1]

    def probes(b: HTTPBackend) -> int:
        return sum(1 for _, path, _ in list(b.requests) if path == "/healthz")

    with LoadBalancer([b0.address, b1.address],
                      health_check=HealthCheck(**FAST)) as lb:  # type: ignore[arg-type]
        wait_until(lambda: probes(b0) >= 1, message="b0 probed")
        lb.drain(b0.address)
        drained_at = probes(b0)
        start = probes(b1)
        wait_until(lambda: probes(b1) >= start + 5, message="five more probes of b1")
        assert probes(b0) <= drained_at + 1  # at most the probe that was in flight


def test_circuit_open_surfaces_through_the_http_transport(
        http_backends: list[HTTPBackend]) -> None:
    b0 = http_backends[0]
    b0.hang = threading.Event()
    lb = LoadBalancer([b0.address], name="users", max_requests=1, retry=None)
    with lb, httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users",
                          timeout=10) as c:
        first = threading.Thread(target=c.get, args=("/slow",))
        first.start()
        wait_until(lambda: len(b0.requests) == 1, message="first request in flight")
        with pytest.raises(clientlb.NoEndpointAvailable, match="circuit open") as info:
            c.get("/second")
        assert isinstance(info.value, httpx.TransportError)
        b0.hang.set()
        first.join(10)
        assert c.get("/third").status_code == 200  # the slot was released
        assert lb.health_statistics()["circuit_open_balancer"] == 1
