"""httpx transports against real HTTP servers on 127.0.0.1 (sync and asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tenacity
import trustme

import clientlb
from clientlb import Outcome, RetryBudget, RetryPolicy

from ._helpers import FakeClock, wait_until
from ._http_backend import FAST, Backend, HangUpBackend, dead_address, make_lb


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(3)]
    yield started
    for b in started:
        b.close()


@contextlib.contextmanager
def unanswered_port() -> Iterator[str]:
    """A loopback port whose accept queue is full: new connects time out (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    fillers: list[socket.socket] = []

    def queue_is_full() -> bool:
        probe = socket.socket()
        probe.settimeout(0.05)
        try:
            probe.connect(listener.getsockname())
        except TimeoutError:
            probe.close()
            return True
        fillers.append(probe)  # it took a place in the queue
        return False

    try:
        wait_until(queue_is_full, timeout=5, interval=0, message="a full accept queue")
        yield address
    finally:
        for conn in fillers:
            conn.close()
        listener.close()


def record_outcomes(lb: clientlb.LoadBalancer) -> list[tuple[str, Outcome]]:
    seen: list[tuple[str, Outcome]] = []
    lb.add_outcome_listener(lambda state, outcome, latency, now: seen.append(
        (state.address, outcome)))
    return seen


# -- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_request", "peak_ewma",
                                      "ring_hash", "maglev"])
def test_requests_spread_over_every_endpoint_for_each_strategy(
        backends: list[Backend], strategy: str) -> None:
    """Every strategy sends traffic to all three backends through httpx."""
    lb = make_lb([b.address for b in backends], strategy=strategy)
    transport = clientlb.HTTPTransport(lb, hash_key=clientlb.hash_by_header("X-User"))
    with httpx.Client(transport=transport) as client:
        for i in range(90):
            assert client.get("http://users/", headers={"X-User": f"u{i}"}).status_code == 200
    counts = [b.served() for b in backends]
    assert sum(counts) == 90
    # peak_ewma favours the fastest backend by design; the others share evenly.
    assert min(counts) >= (1 if strategy == "peak_ewma" else 10), counts


def test_host_header_keeps_the_logical_name_while_connecting_to_endpoints(
        backends: list[Backend]) -> None:
    """The Host header is the service name; the response says which endpoint served it."""
    lb = make_lb([b.address for b in backends])
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        served = {client.get("http://users/a?b=1").extensions["clientlb.endpoint"]
                  for _ in range(3)}
    assert served == {b.address for b in backends}
    assert {r[:3] for b in backends for r in b.requests} == {("GET", "/a?b=1", "users")}


def test_transport_options_are_checked_and_passed_through(backends: list[Backend]) -> None:
    """Unknown options and proxies are refused at construction; limits apply per endpoint."""
    lb = make_lb([backends[0].address])
    with pytest.raises(clientlb.ConfigError, match="unknown httpx transport option 'verfiy'"):
        clientlb.HTTPTransport(lb, verfiy=False)
    with pytest.raises(clientlb.ConfigError, match="'proxy' is not supported"):
        clientlb.HTTPTransport(lb, proxy="http://127.0.0.1:3128")
    with pytest.raises(clientlb.ConfigError, match="hash_key must be a callable"):
        clientlb.HTTPTransport(lb, hash_key="X-User")  # type: ignore[arg-type]
    transport = clientlb.HTTPTransport(lb, limits=httpx.Limits(max_connections=1), http1=True)
    with httpx.Client(transport=transport) as client:
        assert client.get("http://users/").status_code == 200
        pool = transport._router.routes()[0].pool
        assert pool._max_connections == 1


@pytest.mark.parametrize("cls", [clientlb.HTTPTransport, clientlb.AsyncHTTPTransport])
def test_httpx_options_are_spelled_out_with_httpx_defaults(cls: type) -> None:
    """Type checkers and IDEs see httpx's keyword parameters (not **options: Any), with
    the defaults of httpx.HTTPTransport; anything else is typed so that no value fits."""
    ours = inspect.signature(cls).parameters
    theirs = inspect.signature(httpx.HTTPTransport).parameters
    for name in ("verify", "cert", "trust_env", "http1", "http2", "limits", "local_address",
                 "retries", "socket_options"):
        assert ours[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert ours[name].annotation is not inspect.Parameter.empty, name
        assert ours[name].default == theirs[name].default, name
    rest = [p for p in ours.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    assert [p.annotation for p in rest] == ["NoReturn"]


def test_pool_of_a_removed_endpoint_is_closed_once_its_last_response_closes(
        backends: list[Backend]) -> None:
    """Removing an endpoint keeps its open stream alive, then closes the pool."""
    a, b, _ = backends
    lb = make_lb([a.address, b.address])
    transport = clientlb.HTTPTransport(lb)
    with httpx.Client(transport=transport) as client:
        with client.stream("GET", "http://users/stream") as response:
            first = response.extensions["clientlb.endpoint"]
            route = next(r for r in transport._router.routes() if r.address == first)
            lb.remove(first)
            assert route.retiring and route.pool.connections  # still streaming
            a.gate.set()
            b.gate.set()
            assert response.read() == b"firstsecond"
        assert route.pool.connections == []  # closed with the response
        assert all(r.address != first for r in transport._router.routes())
        assert client.get("http://users/").extensions["clientlb.endpoint"] != first
    assert "pools=0" in repr(transport)


def test_repr_shows_service_pools_and_in_flight(backends: list[Backend]) -> None:
    lb = make_lb([b.address for b in backends])
    transport = clientlb.HTTPTransport(lb)
    with httpx.Client(transport=transport) as client:
        client.get("http://users/")
        assert repr(transport) == ("<HTTPTransport 'users' strategy=round_robin pools=1 "
                                   "in_flight=0 retry=3 attempts>")


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_backends(ca: trustme.CA, name: str, count: int = 2) -> list[Backend]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_ctx)
    return [Backend(f"t{i}", ssl_context=server_ctx) for i in range(count)]


def test_tls_verifies_the_logical_name_while_connecting_to_loopback(ca: trustme.CA) -> None:
    """A certificate for users.internal is accepted from 127.0.0.1; SNI and Host say so."""
    servers = tls_backends(ca, "users.internal")
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        lb = make_lb([s.address for s in servers])
        with httpx.Client(transport=clientlb.HTTPTransport(lb, verify=client_ctx)) as client:
            texts = {client.get("https://users.internal/").text for _ in range(4)}
        assert texts == {"t0\n", "t1\n"}
        assert {r[2] for s in servers for r in s.requests} == {"users.internal"}
    finally:
        for s in servers:
            s.close()


def test_tls_server_name_overrides_the_request_host(ca: trustme.CA) -> None:
    servers = tls_backends(ca, "users.internal", count=1)
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        lb = make_lb([servers[0].address])
        transport = clientlb.HTTPTransport(lb, verify=client_ctx, server_name="users.internal")
        with httpx.Client(transport=transport) as client:
            assert client.get("https://users/").text == "t0\n"
    finally:
        servers[0].close()


def test_tls_certificate_for_another_name_is_refused(ca: trustme.CA) -> None:
    """A certificate that does not name the service fails on every endpoint, and says so."""
    servers = tls_backends(ca, "other.internal")
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        lb = make_lb([s.address for s in servers])
        with httpx.Client(transport=clientlb.HTTPTransport(lb, verify=client_ctx)) as client, \
                pytest.raises(httpx.ConnectError) as info:
            client.get("https://users.internal/")
        message = str(info.value)
        assert "CERTIFICATE_VERIFY_FAILED" in message
        assert all(s.address in message for s in servers)
        assert all(s.served() == 0 for s in servers)
    finally:
        for s in servers:
            s.close()


# -- outcomes -----------------------------------------------------------------------------------


def test_every_httpcore_exception_is_mapped_to_the_httpx_exception_of_the_same_name() -> None:
    import httpcore

    from clientlb._http.transport import classify_exception

    # ConnectionNotAvailable never leaves httpcore's pool (it retries on another connection).
    names = [n for n in dir(httpcore) if isinstance(getattr(httpcore, n), type)
             and issubclass(getattr(httpcore, n), Exception) and n != "ConnectionNotAvailable"]
    assert len(names) >= 13
    for name in names:
        cls, _, _ = classify_exception(getattr(httpcore, name)("x"))
        assert cls is getattr(httpx, name), name


@pytest.mark.parametrize(("exc", "outcome", "reached"), [
    ("ConnectError", Outcome.CONNECT_FAILURE, False),
    ("ConnectTimeout", Outcome.CONNECT_FAILURE, False),
    ("PoolTimeout", Outcome.CANCELLED, False),
    ("ReadTimeout", Outcome.TIMEOUT, True),
    ("WriteTimeout", Outcome.TIMEOUT, True),
    ("ReadError", Outcome.FAILURE, True),
    ("RemoteProtocolError", Outcome.FAILURE, True),
    ("LocalProtocolError", Outcome.CANCELLED, True),
])
def test_exceptions_classify_into_outcomes(exc: str, outcome: Outcome, reached: bool) -> None:
    import httpcore

    from clientlb._http.transport import classify_exception

    assert classify_exception(getattr(httpcore, exc)("x"))[1:] == (outcome, reached)
    assert classify_exception(KeyboardInterrupt())[:2] == (None, Outcome.CANCELLED)


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.SUCCESS), (404, Outcome.SUCCESS), (429, Outcome.SUCCESS),
    (500, Outcome.FAILURE), (501, Outcome.FAILURE), (502, Outcome.GATEWAY_FAILURE),
    (503, Outcome.GATEWAY_FAILURE), (504, Outcome.GATEWAY_FAILURE),
])
def test_statuses_classify_into_outcomes_through_the_transport(status: int,
                                                               outcome: Outcome) -> None:
    """respx answers at the httpcore level, so the whole transport path classifies."""
    import respx

    lb = make_lb(["10.9.9.9:80"], retry=None)
    seen = record_outcomes(lb)
    with respx.mock(using="httpcore") as mock, \
            httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        mock.get("http://10.9.9.9:80/").respond(status)
        assert client.get("http://users/").status_code == status
    assert seen == [("10.9.9.9:80", outcome)]


def test_outcomes_of_real_failures_are_reported(backends: list[Backend]) -> None:
    """Refused connect, 503, 500, read timeout and success, each as the right outcome."""
    a, b, c = backends
    dead = dead_address()
    a.status, b.status = 503, 500
    c.hang = threading.Event()
    for addr, expected in [(dead, Outcome.CONNECT_FAILURE), (a.address, Outcome.GATEWAY_FAILURE),
                           (b.address, Outcome.FAILURE), (c.address, Outcome.TIMEOUT)]:
        lb = make_lb([addr], retry=None)
        seen = record_outcomes(lb)
        with httpx.Client(transport=clientlb.HTTPTransport(lb), timeout=0.5) as client, \
                contextlib.suppress(httpx.TransportError):
            client.get("http://users/")
        assert seen == [(addr, expected)]
    c.hang.set()


def test_streamed_response_stays_in_flight_until_closed(backends: list[Backend]) -> None:
    """Headers arriving do not end the call: least_request sees the download until close."""
    a = backends[0]
    lb = make_lb([a.address], strategy="least_request")
    seen = record_outcomes(lb)
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        with client.stream("GET", "http://users/stream") as response:
            assert response.status_code == 200
            assert lb.snapshot().endpoints[0].in_flight == 1
            chunks = response.iter_raw()
            assert next(chunks) == b"first"
            assert lb.snapshot().endpoints[0].in_flight == 1
            assert seen == []
            a.gate.set()
            assert b"".join(chunks) == b"second"  # httpx closes a stream read to its end
            assert lb.snapshot().endpoints[0].in_flight == 0
        assert seen == [(a.address, Outcome.SUCCESS)]
        with client.stream("GET", "http://users/stream") as response:
            assert lb.snapshot().endpoints[0].in_flight == 1
        assert lb.snapshot().endpoints[0].in_flight == 0  # closed without reading


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_dead_port_never_fails_a_request_of_any_method(backends: list[Backend],
                                                       method: str) -> None:
    """Connection refused means the request was not sent: retried elsewhere, any method."""
    dead = dead_address()
    lb = make_lb([dead, backends[0].address, backends[1].address])
    seen = record_outcomes(lb)
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        statuses = [client.request(method, "http://users/", content=b"x").status_code
                    for _ in range(30)]
    assert statuses == [200] * 30
    assert (dead, Outcome.CONNECT_FAILURE) in seen  # the dead port was really tried
    assert sum(b.served() for b in backends) == 30


def test_a_503_is_never_seen_by_idempotent_requests(backends: list[Backend]) -> None:
    """GETs retry a 503 elsewhere; a plain POST gets it; opted-in POSTs are retried."""
    backends[0].status = 503
    lb = make_lb([b.address for b in backends])
    with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users") as client:
        assert {client.get("/").status_code for _ in range(30)} == {200}
        posts = Counter(client.post("/", content=b"x").status_code for _ in range(30))
        assert posts[503] == 10 and posts[200] == 20  # round robin: every third
        opted = {client.post("/", content=b"x", extensions={"clientlb.retry": True}).status_code
                 for _ in range(6)}
        keyed = {client.post("/", content=b"x", headers={"Idempotency-Key": "k"}).status_code
                 for _ in range(6)}
        assert opted == keyed == {200}
        assert {client.get("/", extensions={"clientlb.retry": False}).status_code
                for _ in range(3)} == {200, 503}


def test_a_retry_never_goes_back_to_an_endpoint_already_tried(backends: list[Backend]) -> None:
    """Three endpoints all answering 503: one GET tries each exactly once."""
    for b in backends:
        b.status = 503
    lb = make_lb([b.address for b in backends], strategy="random")
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        response = client.get("http://users/")
    assert response.status_code == 503  # the last answer is returned as it is
    assert [b.served() for b in backends] == [1, 1, 1]
    assert len(response.extensions["clientlb.tried"]) == 2


def test_retry_after_is_honoured_up_to_the_cap(backends: list[Backend]) -> None:
    """A Retry-After of 30 s waits only the policy's cap before the next endpoint."""
    from clientlb._http.transport import parse_retry_after

    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    state = RetryPolicy(backoff=tenacity.wait_none(), retry_after_cap=0.5).start()
    assert state.next_delay(retry_after=0.2) == 0.2
    assert state.next_delay(retry_after=30) == 0.5
    assert state.next_delay() is None  # three attempts spent

    backends[0].status, backends[0].retry_after = 503, "30"
    policy = RetryPolicy(backoff=tenacity.wait_none(), retry_after_cap=0.15)
    lb = make_lb([b.address for b in backends[:2]], retry=policy)
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        start = time.monotonic()
        assert client.get("http://users/").status_code == 200
        elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 2.0


def test_hung_backend_times_out_and_idempotent_requests_go_elsewhere(
        backends: list[Backend]) -> None:
    """A read timeout is retried for GET; a POST gets httpx.ReadTimeout naming the endpoint."""
    hung = backends[0]
    hung.hang = threading.Event()
    lb = make_lb([b.address for b in backends])
    seen = record_outcomes(lb)
    with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users",
                      timeout=httpx.Timeout(5.0, read=0.5)) as client:
        assert [client.get("/").status_code for _ in range(3)] == [200] * 3
        assert (hung.address, Outcome.TIMEOUT) in seen
        with pytest.raises(httpx.ReadTimeout, match=hung.address.replace(".", r"\.")):
            for _ in range(3):
                client.post("/", content=b"x")
    hung.hang.set()


def test_budget_exhaustion_stops_retries_at_twenty_percent(backends: list[Backend]) -> None:
    """With every backend failing, retries stay within 20% of the requests."""
    for b in backends:
        b.status = 503
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0, ttl=10)
    lb = make_lb([b.address for b in backends], clock=clock,
                 retry=RetryPolicy(backoff=tenacity.wait_none(), budget=budget))
    assert lb.retry_budget is not None and lb.retry_budget is not budget
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        statuses = [client.get("http://users/").status_code for _ in range(100)]
    assert statuses == [503] * 100
    assert sum(b.served() for b in backends) == 120  # 100 requests + 20 retries
    stats = lb.retry_budget.statistics()
    assert stats["retries"] == 20 and stats["refused"] >= 80
    clock.advance(11)  # the window slides: deposits and withdrawals expire
    assert lb.retry_budget.balance == 0


def test_budget_floor_allows_retries_for_a_quiet_client() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1, ttl=10, clock=clock)
    assert budget.balance == 10
    assert sum(budget.try_withdraw() for _ in range(15)) == 10
    for _ in range(10):
        budget.deposit()
    assert budget.try_withdraw() and budget.try_withdraw() and not budget.try_withdraw()
    clock.advance(10.5)
    assert budget.balance == 10


def test_retry_policy_and_budget_reject_bad_settings() -> None:
    with pytest.raises(clientlb.ConfigError, match=r"retry\.attempts: attempts must be an integer"):
        RetryPolicy(attempts=0)
    with pytest.raises(clientlb.ConfigError, match=r"retry\.budget\.ttl: ttl must be 1\.\.60"):
        RetryBudget(ttl=0.5)
    with pytest.raises(clientlb.ConfigError, match="retry: retry must be a RetryPolicy"):
        clientlb.LoadBalancer(["127.0.0.1:80"], retry=3)  # type: ignore[arg-type]


def test_final_error_is_an_httpx_error_naming_every_endpoint_tried() -> None:
    dead = [dead_address() for _ in range(3)]
    lb = make_lb(dead)
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client, \
            pytest.raises(httpx.ConnectError) as info:
        client.get("http://users/")
    assert isinstance(info.value, httpx.TransportError)
    assert all(a in str(info.value) for a in dead)
    assert "3 attempts failed" in str(info.value)
    assert info.value.request.url == "http://users/"


def test_retry_none_turns_retries_off(backends: list[Backend]) -> None:
    dead = dead_address()
    lb = make_lb([dead, backends[0].address], retry=None)
    assert lb.retry_budget is None
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client, \
            pytest.raises(httpx.ConnectError, match=dead):
        for _ in range(2):
            client.get("http://users/")


def test_a_streamed_body_is_retried_only_if_it_was_never_sent(backends: list[Backend]) -> None:
    """Refused before sending: the generator body goes to the next endpoint. A 503
    after sending it: returned, as the body cannot be produced twice."""
    dead = dead_address()
    backends[1].status = 503
    lb = make_lb([dead, backends[0].address, backends[1].address])
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        first = client.put("http://users/", content=iter([b"a", b"b"]))
        second = client.put("http://users/", content=iter([b"c", b"d"]))
    assert (first.status_code, first.text) == (200, "b0\n")
    assert backends[0].requests[0][3] == b"ab"
    assert second.status_code == 503 and backends[1].requests[0][3] == b"cd"


def test_no_endpoint_available_is_an_httpx_transport_error() -> None:
    lb = make_lb(["127.0.0.1:9"])
    lb.close()
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client, \
            pytest.raises(httpx.TransportError) as info:
        client.get("http://users/")
    assert isinstance(info.value, clientlb.NoEndpointAvailable)
    assert "the balancer is closed" in str(info.value)
    assert info.value.request.url.host == "users"


def test_a_transport_and_its_requests_log_nothing_at_info(
        backends: list[Backend], caplog: pytest.LogCaptureFixture) -> None:
    """Routine work (the first endpoint set, a request, an update) is DEBUG, so tests
    that assert on log records (httpx's own) see nothing of clientlb's."""
    caplog.set_level(logging.DEBUG, logger="clientlb")
    lb = clientlb.LoadBalancer([b.address for b in backends[:2]], name="users")
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        lb.add(backends[2].address)
        client.get("http://users/")
    lb.close()
    assert any("endpoints updated" in r.getMessage() for r in caplog.records)  # at DEBUG
    loud = [r.getMessage() for r in caplog.records
            if r.name.startswith("clientlb") and r.levelno >= logging.INFO]
    assert loud == []


def test_circuit_open_through_httpx_is_catchable_as_circuit_open_with_scope_and_limit(
        backends: list[Backend]) -> None:
    """Over max_requests the transport raises an httpx.TransportError that is also a
    clientlb.CircuitOpen, keeping .scope and .limit (sync and async)."""
    lb = make_lb([backends[0].address], max_requests=1)
    held = lb.pick()  # the one request the breaker lets through
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client, \
            pytest.raises(clientlb.CircuitOpen) as info:
        client.get("http://users/")
    err = info.value
    assert isinstance(err, httpx.TransportError)
    assert (err.scope, err.limit, err.service) == ("balancer", 1, "users")
    assert "max_requests=1" in str(err) and err.request.url.host == "users"

    async def main() -> None:
        async with httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb)) as client:
            with pytest.raises(clientlb.CircuitOpen) as ainfo:
                await client.get("http://users/")
        assert isinstance(ainfo.value, httpx.TransportError)
        assert (ainfo.value.scope, ainfo.value.limit) == ("balancer", 1)

    asyncio.run(main())
    held.done()
    lb.close()


# -- affinity -----------------------------------------------------------------------------------


def test_hash_by_header_sends_each_user_to_one_endpoint(backends: list[Backend]) -> None:
    lb = make_lb([b.address for b in backends], strategy="maglev")
    transport = clientlb.HTTPTransport(lb, hash_key=clientlb.hash_by_header("X-User"))
    with httpx.Client(transport=transport) as client:
        homes = {u: {client.get("http://users/", headers={"X-User": u}).text for _ in range(4)}
                 for u in ("ann", "bob", "cyd", "dan", "eve")}
    assert all(len(h) == 1 for h in homes.values())


def test_hash_by_client_ip_uses_the_first_forwarded_address() -> None:
    key = clientlb.hash_by_client_ip()
    req = httpx.Request("GET", "http://users/",
                        headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
    assert key(req) == "203.0.113.9"
    assert key(httpx.Request("GET", "http://users/")) is None
    cookie = clientlb.hash_by_cookie("sid")
    assert cookie(httpx.Request("GET", "http://u/", headers={"Cookie": "a=1; sid=xyz"})) == "xyz"


def test_cookie_affinity_sticks_and_moves_cleanly_when_the_backend_is_lost(
        backends: list[Backend]) -> None:
    """The cookie pins a client to one endpoint; when it dies the session moves once."""
    lb = make_lb([b.address for b in backends])
    transport = clientlb.HTTPTransport(lb, affinity=clientlb.CookieAffinity())
    with httpx.Client(transport=transport) as client:
        first = client.get("http://users/")
        token = first.cookies["clientlb-affinity"]
        assert "127.0.0.1" not in token and str(backends[0].port) not in token
        assert "HttpOnly" in first.headers["set-cookie"]
        home = first.text
        assert {client.get("http://users/").text for _ in range(6)} == {home}
        lost = next(b for b in backends if f"{b.name}\n" == home)
        lost.close()
        moved = client.get("http://users/")
        assert moved.status_code == 200 and moved.text != home
        assert moved.cookies["clientlb-affinity"] != token
        assert {client.get("http://users/").text for _ in range(6)} == {moved.text}
        # An endpoint removed from the target: its token is unknown, a normal pick.
        lb.remove(moved.extensions["clientlb.endpoint"])
        again = client.get("http://users/")
        assert again.status_code == 200 and again.text not in (home, moved.text)


def test_header_affinity_with_a_shared_secret_is_honoured_by_another_balancer(
        backends: list[Backend]) -> None:
    """Two processes with the same secret agree on tokens; the header carries them."""
    secret = b"0123456789abcdef-shared"
    addresses = [b.address for b in backends]
    t1 = clientlb.HTTPTransport(make_lb(addresses),
                                affinity=clientlb.HeaderAffinity(secret=secret))
    t2 = clientlb.HTTPTransport(make_lb(addresses, strategy="random"),
                                affinity=clientlb.HeaderAffinity(secret=secret))
    with httpx.Client(transport=t1) as c1, httpx.Client(transport=t2) as c2:
        first = c1.get("http://users/")
        token = first.headers["X-Clientlb-Affinity"]
        texts = {c2.get("http://users/", headers={"X-Clientlb-Affinity": token}).text
                 for _ in range(8)}
    assert texts == {first.text}


# -- asyncio ------------------------------------------------------------------------------------


def test_async_transport_spreads_retries_and_streams(backends: list[Backend]) -> None:
    """AsyncClient: concurrent spread, a dead port unseen, a stream in flight until closed."""
    dead = dead_address()
    backends[2].status = 503

    async def main() -> None:
        lb = make_lb([dead, *(b.address for b in backends)])
        transport = clientlb.AsyncHTTPTransport(lb)
        async with httpx.AsyncClient(transport=transport, base_url="http://users") as client:
            responses = await asyncio.gather(*(client.get("/") for _ in range(40)))
            assert {r.status_code for r in responses} == {200}
            assert {r.text for r in responses} == {"b0\n", "b1\n"}
            async with client.stream("GET", "/stream") as response:
                address = response.extensions["clientlb.endpoint"]
                assert lb.state_of(address).load.in_flight == 1  # type: ignore[union-attr]
                for b in backends:
                    b.gate.set()
                assert await response.aread() == b"firstsecond"  # read to the end: closed
            assert lb.state_of(address).load.in_flight == 0  # type: ignore[union-attr]
            assert "AsyncHTTPTransport 'users'" in repr(transport)

    asyncio.run(main())


def test_async_tls_and_cookie_affinity(ca: trustme.CA) -> None:
    servers = tls_backends(ca, "users.internal", count=3)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        lb = make_lb([s.address for s in servers])
        transport = clientlb.AsyncHTTPTransport(lb, verify=client_ctx,
                                                affinity=clientlb.CookieAffinity())
        async with httpx.AsyncClient(transport=transport) as client:
            first = await client.get("https://users.internal/")
            assert "Secure" in first.headers["set-cookie"]
            texts = {(await client.get("https://users.internal/")).text for _ in range(5)}
            assert texts == {first.text}

    try:
        asyncio.run(main())
    finally:
        for s in servers:
            s.close()


def test_async_pools_of_removed_endpoints_are_closed(backends: list[Backend]) -> None:
    async def main() -> None:
        lb = make_lb([b.address for b in backends])
        transport = clientlb.AsyncHTTPTransport(lb)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                await client.get("http://users/")
            pools = {r.address: r.pool for r in transport._router.routes()}
            lb.remove(backends[0].address)  # the pool is closed on the loop, soon
            for _ in range(100):
                if not pools[backends[0].address].connections:
                    break
                await asyncio.sleep(0.01)
            assert pools[backends[0].address].connections == []
            assert len(transport._router._routes) == 2

    asyncio.run(main())


def test_a_transport_given_a_target_owns_and_closes_its_balancer(
        backends: list[Backend]) -> None:
    transport = clientlb.HTTPTransport(f"static://{backends[0].address},{backends[1].address}")
    with httpx.Client(transport=transport) as client:
        assert {client.get("http://svc/").status_code for _ in range(4)} == {200}
    assert transport.lb.closed


def test_connect_timeout_is_a_connect_failure_retried_for_any_method(
        backends: list[Backend]) -> None:
    """A backend that never completes the handshake costs one connect timeout, then the
    POST goes to a live endpoint."""
    with unanswered_port() as silent:
        lb = make_lb([silent, backends[0].address])
        seen = record_outcomes(lb)
        with httpx.Client(transport=clientlb.HTTPTransport(lb),
                          timeout=httpx.Timeout(5.0, connect=0.2)) as client:
            statuses = [client.post("http://users/", content=b"x").status_code
                        for _ in range(2)]
    assert statuses == [200, 200]
    assert (silent, Outcome.CONNECT_FAILURE) in seen


def test_latency_recorded_is_the_time_to_headers_not_the_download(
        backends: list[Backend]) -> None:
    a = backends[0]
    lb = make_lb([a.address])
    latencies: list[float] = []
    lb.add_outcome_listener(lambda state, outcome, latency, now: latencies.append(latency))
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client, \
            client.stream("GET", "http://users/stream") as response:
        start = time.monotonic()
        threading.Timer(0.5, a.gate.set).start()
        response.read()
        assert time.monotonic() - start >= 0.45
    assert len(latencies) == 1 and latencies[0] < 0.4


def test_threads_share_one_transport_without_losing_requests_or_slots(
        backends: list[Backend]) -> None:
    """8 threads, a dead port among the endpoints: all succeed, nothing stays in flight."""
    dead = dead_address()
    lb = make_lb([dead, *(b.address for b in backends)], strategy="least_request")
    failures: list[BaseException] = []
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        def work() -> None:
            for _ in range(25):
                try:
                    assert client.post("http://users/", content=b"x").status_code == 200
                except BaseException as exc:  # reported to the main thread
                    failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert failures == []
    assert sum(b.served() for b in backends) == 200
    assert all(row.in_flight == 0 for row in lb.snapshot().endpoints)


def test_a_spent_budget_is_named_in_the_final_error() -> None:
    hangups = [HangUpBackend() for _ in range(2)]
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, ttl=10, clock=FakeClock())
    lb = make_lb([h.address for h in hangups],
                 retry=RetryPolicy(backoff=tenacity.wait_none(), budget=budget))
    try:
        with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="2 attempts failed"):
                client.get("http://users/")  # the one retry of the floor
            with pytest.raises(httpx.RemoteProtocolError, match="retry budget exhausted"):
                client.get("http://users/")
    finally:
        for h in hangups:
            h.close()


def test_attempts_that_never_reached_a_backend_do_not_spend_the_budget() -> None:
    """Connection refused everywhere: every request tries each endpoint once, and the
    budget (room for one retry here) is untouched — it guards the backends' load."""
    dead = [dead_address() for _ in range(3)]
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, ttl=10, clock=FakeClock())
    lb = make_lb(dead, retry=RetryPolicy(backoff=tenacity.wait_none(), budget=budget))
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        for _ in range(5):
            with pytest.raises(httpx.ConnectError, match="3 attempts failed") as info:
                client.get("http://users/")
            assert "every endpoint tried" in str(info.value)
    assert lb.retry_budget is not None
    assert lb.retry_budget.statistics()["retries"] == 0


def test_an_unclosed_transport_is_not_kept_alive_by_its_balancer(
        backends: list[Backend]) -> None:
    import gc
    import weakref

    lb = make_lb([b.address for b in backends])
    transport = clientlb.HTTPTransport(lb)
    ref = weakref.ref(transport)
    del transport
    gc.collect()
    assert ref() is None
    lb.remove(backends[0].address)  # the orphaned listener is harmless


def test_http2_over_tls_keeps_the_logical_authority(ca: trustme.CA, tmp_path: Any) -> None:
    """http2=True passes through: ALPN picks h2 on hypercorn, :authority is the service."""
    pytest.importorskip("h2")
    hypercorn_asyncio = pytest.importorskip("hypercorn.asyncio")
    from hypercorn.config import Config

    cert = ca.issue_cert("users.internal")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        host = dict(scope["headers"]).get(b"host", b"").decode()
        body = f"{scope['http_version']} {host}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{port.getsockname()[1]}"
    port.close()
    config = Config()
    config.bind = [address]
    config.certfile = config.keyfile = str(tmp_path / "server.pem")
    config.alpn_protocols = ["h2", "http/1.1"]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, daemon=True, args=(
        hypercorn_asyncio.serve(app, config, shutdown_trigger=stop.wait),))  # type: ignore[arg-type]
    thread.start()
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        lb = make_lb([address])
        transport = clientlb.HTTPTransport(lb, verify=client_ctx, http2=True)
        with httpx.Client(transport=transport) as client:
            def get() -> httpx.Response | None:
                try:
                    return client.get("https://users.internal/")
                except httpx.ConnectError:
                    return None  # the server is still starting
            response = wait_until(get, timeout=10, message="hypercorn to listen")
        assert response.http_version == "HTTP/2"
        assert response.text == "2 users.internal"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_an_endpoint_removed_between_pick_and_connect_gets_no_lasting_pool(
        backends: list[Backend]) -> None:
    """The race of a discovery update with a request: its pool serves that call only."""
    lb = make_lb([b.address for b in backends[:2]])
    transport = clientlb.HTTPTransport(lb)
    pick = lb.pick()
    lb.remove(pick.endpoint.address)
    route = transport._router._route(pick, None)
    assert route.retiring and not transport._router._routes
    transport._router.release(route)
    assert transport._router.to_close == [route.pool]  # closed after the call
    pick.done()


@pytest.mark.parametrize(("pool_shards", "expected"), [(4, [4, 4, 2]), (2, [5, 5]), (1, [10])])
def test_a_busy_endpoint_spreads_its_requests_over_pool_shards(
        backends: list[Backend], pool_shards: int, expected: list[int]) -> None:
    """10 requests held in flight on one endpoint: a new pool at every 4, up to pool_shards."""
    backend = backends[0]
    backend.hang = threading.Event()

    async def main() -> None:
        lb = make_lb([backend.address])
        transport = clientlb.AsyncHTTPTransport(lb, pool_shards=pool_shards)
        async with httpx.AsyncClient(transport=transport) as client:
            calls = [asyncio.create_task(client.get("http://users/")) for _ in range(10)]
            for _ in range(500):
                if backend.served() == 10:
                    break
                await asyncio.sleep(0.01)
            assert [r.in_flight for r in transport._router.routes()] == expected
            assert backend.hang is not None
            backend.hang.set()
            assert {r.status_code for r in await asyncio.gather(*calls)} == {200}
            assert sum(r.in_flight for r in transport._router.routes()) == 0

    asyncio.run(main())


@pytest.mark.parametrize(("max_connections", "pools"), [(5, 1), (8, 2), (100, 3)])
def test_limits_cap_the_connections_of_an_endpoint_whatever_its_pool_shards(
        backends: list[Backend], max_connections: int, pools: int) -> None:
    """12 requests held in flight on one endpoint with limits=Limits(max_connections=N):
    the backend never sees more than N connections at once, however many pools the
    endpoint gets (at most one per 4 connections allowed; the caps sum to N)."""
    backend = backends[0]
    backend.hang = threading.Event()

    async def main() -> None:
        lb = make_lb([backend.address])
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=3)
        transport = clientlb.AsyncHTTPTransport(lb, limits=limits)
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            calls = [asyncio.create_task(client.get("http://users/")) for _ in range(12)]
            try:
                expected = min(12, max_connections)
                for _ in range(500):
                    if backend.served() >= expected:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # time for any connection over the cap to show up
                assert backend.served() == expected
                routes = transport._router.routes()
                assert len(routes) == pools
                assert sum(r.pool._max_connections for r in routes) <= max_connections
                assert sum(r.pool._max_keepalive_connections for r in routes) <= 3
            finally:
                assert backend.hang is not None
                backend.hang.set()
                results = await asyncio.gather(*calls, return_exceptions=True)
            assert {getattr(r, "status_code", r) for r in results} == {200}

    asyncio.run(main())


def test_pool_shards_is_checked() -> None:
    with pytest.raises(clientlb.ConfigError, match=r"pool_shards must be an integer 1\.\.64"):
        clientlb.HTTPTransport(make_lb(["127.0.0.1:9"]), pool_shards=0)


def test_a_retry_policy_changed_through_the_registry_applies_to_a_live_transport(
        backends: list[Backend]) -> None:
    backends[1].status = 503
    registry = clientlb.Registry()
    lb = registry.create("users", [backends[1].address, backends[0].address],
                         strategy="round_robin", outlier_detection=None, retry=FAST)
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        assert [client.get("http://users/").status_code for _ in range(4)] == [200] * 4
        registry.update("users", retry=None)
        assert "retry=off" in repr(client._transport)
        assert 503 in [client.get("http://users/").status_code for _ in range(4)]
    registry.delete("users")


def test_a_deadline_bounds_the_whole_request_across_attempts() -> None:
    """timeout=0.3 over three hanging endpoints would take 0.9 s or more; the
    transport's deadline stops the logical request at 0.4 s."""
    from ._helpers import HTTPBackend

    hanging = [HTTPBackend(f"h{i}", delay=5.0) for i in range(3)]
    lb = make_lb([h.address for h in hanging])
    try:
        transport = clientlb.HTTPTransport(lb, deadline=0.4)
        with httpx.Client(transport=transport, timeout=0.3) as client:
            start = time.monotonic()
            with pytest.raises(httpx.TimeoutException) as info:
                client.get("http://users/")
            elapsed = time.monotonic() - start
        assert elapsed < 0.8, elapsed
        assert "deadline exceeded" in str(info.value)
    finally:
        for h in hanging:
            h.close()
