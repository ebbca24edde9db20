"""Connection-aware picks (clientlb._engine.connectivity) and the one naming rule."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import clientlb
from clientlb import LoadBalancer, Outcome, OutlierDetection
from clientlb._engine.naming import logical_name

from ._helpers import FakeClock, HTTPBackend, free_port, wait_until


@pytest.fixture
def backends() -> Iterator[list[HTTPBackend]]:
    started = [HTTPBackend(f"b{i}") for i in range(2)]
    yield started
    for b in started:
        b.close()


def listen_on(port: int) -> socket.socket:
    """A bare TCP listener: the kernel completes handshakes, enough for a probe."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


def picks(lb: LoadBalancer, n: int = 60) -> set[str]:
    seen = set()
    for _ in range(n):
        with lb.pick() as p:
            seen.add(p.endpoint.address)
    return seen


def test_one_connect_failure_takes_an_endpoint_out_of_picks_until_a_probe_connects(
        backends: list[HTTPBackend]) -> None:
    port = free_port()
    dead = f"127.0.0.1:{port}"
    with LoadBalancer([dead, *(b.address for b in backends)], strategy="round_robin",
                      outlier_detection=None) as lb:
        assert lb.snapshot().by_address()[dead].connectivity == "idle"
        p = lb.pick(prefer=dead)
        assert p.address == dead
        p.done(Outcome.CONNECT_FAILURE)
        assert lb.snapshot().by_address()[dead].connectivity in (
            "transient_failure", "connecting")
        assert dead not in picks(lb)
        listener = listen_on(port)
        try:
            wait_until(lambda: lb.snapshot().by_address()[dead].connectivity == "ready",
                       message="the background probe to reconnect")
            assert dead in picks(lb)
        finally:
            listener.close()


def test_every_endpoint_unreachable_still_picks_rather_than_failing() -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    with LoadBalancer(dead, strategy="round_robin", outlier_detection=None) as lb:
        for address in dead:
            lb.pick(prefer=address).done(Outcome.CONNECT_FAILURE)
        seen = set()
        for _ in range(30):
            p = lb.pick()
            seen.add(p.address)
            p.done(Outcome.CANCELLED)  # says nothing about the endpoint
        assert seen == set(dead)


def test_an_ejected_endpoint_that_accepts_connections_again_returns_early(
        backends: list[HTTPBackend], clock: FakeClock) -> None:
    port = free_port()
    dead = f"127.0.0.1:{port}"
    od = OutlierDetection(split_local_origin_errors=True, consecutive_local_origin_failures=1,
                          base_ejection_time=30.0)
    with LoadBalancer([dead, backends[0].address], clock=clock,
                      outlier_detection=od) as lb:
        lb.pick(prefer=dead).done(Outcome.CONNECT_FAILURE)
        assert lb.snapshot().by_address()[dead].state == "ejected"
        listener = listen_on(port)
        try:
            # the fake clock never moves: only the probe can end the 30 s ejection
            wait_until(lambda: lb.snapshot().by_address()[dead].state == "healthy",
                       message="the probe to end the ejection")
            assert lb.health_statistics()["unejections_reconnected"] == 1
        finally:
            listener.close()


@pytest.mark.parametrize(("target", "expected"), [
    ("srv://127.0.0.1:1/_grpc._tcp.users.example", "users.example"),
    ("dns://127.0.0.1:1/users.example:8443", "users.example:8443"),
    ("static://127.0.0.1:1,127.0.0.1:2", None),
])
def test_grpc_tcp_and_health_checks_use_one_logical_name(target: str,
                                                        expected: str | None) -> None:
    pytest.importorskip("grpc")
    import ssl

    from clientlb._health.manager import HealthManager
    from clientlb._tcp import _tls_name
    from clientlb.grpc._common import logical_name as grpc_name

    with LoadBalancer(target, first_resolution_timeout=0) as lb:
        name = logical_name(lb)
        assert (name.authority if name else None) == expected
        host = name.host if name else None
        g = grpc_name(lb, None)
        assert (g.authority if g else None) == expected
        context = ssl.create_default_context()
        context.check_hostname = False
        assert _tls_name(lb, None, context)(lb.target.endpoints[0] if lb.target.endpoints
                                            else clientlb.Endpoint("127.0.0.1", 1)) == host
        assert HealthManager._logical_name(lb._health) == host
