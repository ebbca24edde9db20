"""Balanced TCP connections (clientlb.connect / clientlb.open_connection) against
real echo servers on 127.0.0.1, with and without TLS (trustme certificates)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

import clientlb
from clientlb import Outcome

from ._helpers import FakeClock, closing, free_port

TLS_NAME = "db.example"


class EchoServer:
    """A threaded TCP server: greets each connection with its name, then echoes lines.

    With ``tls`` (a server ``SSLContext``) each accepted connection is wrapped
    in TLS; with ``silent`` it accepts and never says a word (a TLS handshake
    against it times out). ``peers`` is the set of open server-side sockets.
    """

    def __init__(self, name: str, *, tls: ssl.SSLContext | None = None,
                 silent: bool = False) -> None:
        self.name = name
        self.tls = tls
        self.silent = silent
        self.accepted = 0
        self.peers: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self._sock.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.peers.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            if self.silent:
                while sock.recv(4096):  # read and ignore until the client gives up
                    pass
                return
            if self.tls is not None:
                sock.settimeout(5)
                sock = self.tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self.peers.discard(conn)
                    self.peers.add(sock)
            sock.sendall(f"{self.name}\n".encode())
            while True:
                data = sock.recv(4096)
                if not data:
                    return
                if data == b"RESET\n":  # abort the connection with a TCP RST
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    return
                sock.sendall(data)
        except OSError:  # includes handshake failures and resets
            return
        finally:
            with self._lock:
                self.peers.discard(sock)
                self.peers.discard(conn)
            sock.close()

    def drop_all(self) -> None:
        """Close every open connection from the server side."""
        with self._lock:
            peers = list(self.peers)
        for peer in peers:
            with contextlib.suppress(OSError):
                peer.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self.drop_all()


def dead_address() -> str:
    """An address where nothing listens: connects are refused at once."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started = [EchoServer(f"s{i}") for i in range(3)]
    yield started
    for s in started:
        s.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_servers(ca: trustme.CA) -> Iterator[list[EchoServer]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(TLS_NAME).configure_cert(ctx)
    started = [EchoServer(f"t{i}", tls=ctx) for i in range(2)]
    yield started
    for s in started:
        s.close()


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def greeting(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def in_flight(lb: clientlb.LoadBalancer) -> dict[str, int]:
    return {e.address: e.in_flight for e in lb.snapshot().endpoints}


class Recorder:
    """An outcome listener: (address, outcome, latency) for every finished pick."""

    def __init__(self, lb: clientlb.LoadBalancer) -> None:
        self.events: list[tuple[str, Outcome, float]] = []
        lb.add_outcome_listener(self)

    def __call__(self, state: Any, outcome: Outcome, latency: float, now: float) -> None:
        self.events.append((state.address, outcome, latency))

    def outcomes(self, address: str | None = None) -> list[Outcome]:
        return [o for a, o, _ in self.events if address is None or a == address]


# -- sync -------------------------------------------------------------------------------


def test_connections_spread_over_every_endpoint(servers: list[EchoServer]) -> None:
    """round_robin over three echo servers: six connections, two per server."""
    lb = closing(clientlb.LoadBalancer([s.address for s in servers], strategy="round_robin"))
    names = []
    for _ in range(6):
        with clientlb.connect(lb, timeout=2) as sock:
            names.append(greeting(sock))
            sock.sendall(b"ping\n")
            assert sock.recv(100) == b"ping\n"
    assert sorted(names) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert all(n == 0 for n in in_flight(lb).values())


def test_dead_port_never_surfaces_as_an_error(servers: list[EchoServer]) -> None:
    """A refused endpoint is reported as a connect failure and the connect goes elsewhere."""
    dead = dead_address()
    lb = closing(clientlb.LoadBalancer([dead, servers[0].address], strategy="random"))
    rec = Recorder(lb)
    for _ in range(30):
        with clientlb.connect(lb, timeout=2) as sock:
            assert greeting(sock) == "s0"
            assert sock.endpoint.address == servers[0].address
    failures = rec.outcomes(dead)
    assert failures, "the dead endpoint was never tried: the test proves nothing"
    assert set(failures) == {Outcome.CONNECT_FAILURE}
    assert rec.outcomes(servers[0].address) == [Outcome.SUCCESS] * 30


def test_every_endpoint_dead_raises_connect_error_naming_each_once() -> None:
    """The final error is a ConnectionError and a ClientLBError listing each endpoint tried."""
    dead = [dead_address(), dead_address()]
    lb = closing(clientlb.LoadBalancer(dead, name="cache", strategy="round_robin"))
    with pytest.raises(clientlb.ConnectError) as info:
        clientlb.connect(lb, timeout=1, attempts=5)
    err = info.value
    assert isinstance(err, ConnectionError)
    assert isinstance(err, clientlb.ClientLBError)
    assert sorted(err.tried) == sorted(dead)  # each once, although attempts=5
    assert "retries=0 " in repr(lb.retry_budget)  # failovers never reached a backend: free
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert "could not connect to 'cache'" in str(err)
    for address in dead:
        assert f"{address} connection refused" in str(err)
    assert all(n == 0 for n in in_flight(lb).values())


def test_attempts_bound_the_endpoints_tried() -> None:
    """attempts=2 over four dead endpoints tries exactly two of them."""
    lb = closing(clientlb.LoadBalancer([dead_address() for _ in range(4)]))
    with pytest.raises(ConnectionError) as info:
        clientlb.connect(lb, timeout=1, attempts=2)
    assert isinstance(info.value, clientlb.ConnectError)
    assert len(set(info.value.tried)) == 2
    assert "after 2 attempts" in str(info.value)


def test_retry_none_means_a_single_attempt(servers: list[EchoServer]) -> None:
    """A balancer built with retry=None does not fail over (explicit attempts= still can)."""
    lb = closing(clientlb.LoadBalancer([dead_address(), dead_address()], retry=None))
    with pytest.raises(clientlb.ConnectError, match="after 1 attempt:") as info:
        clientlb.connect(lb, timeout=1)
    assert len(info.value.tried) == 1
    lb = closing(clientlb.LoadBalancer([dead_address(), servers[0].address], retry=None))
    for _ in range(10):
        with clientlb.connect(lb, timeout=1, attempts=2) as sock:
            assert greeting(sock) == "s0"


def test_failovers_never_spend_the_retry_budget(servers: list[EchoServer]) -> None:
    """A refused connect never reached a backend: it fails over even with the budget
    spent, and withdraws nothing (the budget guards backends' load; issue 13)."""
    spent = clientlb.RetryBudget(ratio=0, min_retries_per_second=0)
    dead = dead_address()
    lb = closing(clientlb.LoadBalancer([dead, servers[0].address], strategy="round_robin",
                                       retry=clientlb.RetryPolicy(attempts=3, budget=spent)))
    rec = Recorder(lb)
    for _ in range(10):
        with clientlb.connect(lb, timeout=1) as sock:
            assert greeting(sock) == "s0"
    assert len(rec.outcomes(dead)) == 1  # then the dead endpoint is skipped by picks
    assert "retries=0 " in repr(lb.retry_budget)


def test_handshake_timeout_is_a_connect_failure_and_fails_over(
        ca: trustme.CA, tls_servers: list[EchoServer], client_ctx: ssl.SSLContext) -> None:
    """A server that accepts but never completes TLS times out and the next endpoint serves."""
    silent = EchoServer("mute", silent=True)
    try:
        lb = closing(clientlb.LoadBalancer([silent.address, tls_servers[0].address], name=TLS_NAME,
                                   strategy="round_robin"))
        rec = Recorder(lb)
        for _ in range(2):  # round robin: each starts on the silent server
            with clientlb.connect(lb, timeout=0.3, ssl_context=client_ctx) as sock:
                assert greeting(sock) == "t0"
        timeouts = rec.outcomes(silent.address)
        assert timeouts and set(timeouts) == {Outcome.CONNECT_FAILURE}
        assert rec.outcomes(tls_servers[0].address) == [Outcome.SUCCESS] * 2
    finally:
        silent.close()


def test_deadline_bounds_all_attempts_together(client_ctx: ssl.SSLContext) -> None:
    """Three silent servers, 1 s per attempt, 0.4 s deadline: fails in about 0.4 s."""
    silent = [EchoServer(f"m{i}", silent=True) for i in range(3)]
    try:
        lb = closing(clientlb.LoadBalancer([s.address for s in silent], name=TLS_NAME))
        start = time.monotonic()
        with pytest.raises(clientlb.ConnectError) as info:
            clientlb.connect(lb, timeout=1.0, deadline=0.4, ssl_context=client_ctx)
        elapsed = time.monotonic() - start
        assert elapsed < 0.9
        assert "within the deadline" in str(info.value)
        assert "timed out" in str(info.value)
    finally:
        for s in silent:
            s.close()


def test_tls_certificate_verified_against_the_logical_name(
        tls_servers: list[EchoServer], client_ctx: ssl.SSLContext) -> None:
    """The balancer's name is the TLS name while the connection goes to 127.0.0.1."""
    lb = closing(clientlb.LoadBalancer([s.address for s in tls_servers], name=TLS_NAME,
                               strategy="round_robin"))
    seen = set()
    for _ in range(2):
        with clientlb.connect(lb, timeout=2, ssl_context=client_ctx) as sock:
            assert isinstance(sock, ssl.SSLSocket)
            assert isinstance(sock, clientlb.BalancedSSLSocket)
            assert sock.server_hostname == TLS_NAME
            assert sock.getpeername()[0] == "127.0.0.1"
            seen.add(greeting(sock))
            sock.sendall(b"secret\n")
            assert sock.recv(100) == b"secret\n"
            assert in_flight(lb)[sock.endpoint.address] == 1
    assert seen == {"t0", "t1"}
    assert all(n == 0 for n in in_flight(lb).values())


def test_tls_wrong_name_is_refused(tls_servers: list[EchoServer],
                                   client_ctx: ssl.SSLContext) -> None:
    """A certificate that does not match server_hostname fails every attempt."""
    lb = closing(clientlb.LoadBalancer([s.address for s in tls_servers], name=TLS_NAME))
    rec = Recorder(lb)
    with pytest.raises(clientlb.ConnectError) as info:
        clientlb.connect(lb, timeout=2, ssl_context=client_ctx,
                         server_hostname="other.example")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "TLS certificate rejected" in str(info.value)
    assert rec.outcomes() == [Outcome.CONNECT_FAILURE, Outcome.CONNECT_FAILURE]


def test_tls_server_hostname_may_depend_on_the_endpoint(
        ca: trustme.CA, client_ctx: ssl.SSLContext) -> None:
    """server_hostname=callable: each backend verified against its own name (here its IP)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server = EchoServer("ip", tls=ctx)
    try:
        lb = closing(clientlb.LoadBalancer([server.address]))
        with clientlb.connect(lb, timeout=2, ssl_context=client_ctx,
                              server_hostname=lambda ep: ep.host) as sock:
            assert greeting(sock) == "ip"
    finally:
        server.close()


def test_tls_over_a_static_target_without_a_name_is_a_config_error(
        client_ctx: ssl.SSLContext) -> None:
    """A static target has no logical name: say so instead of verifying against "static"."""
    lb = closing(clientlb.LoadBalancer([dead_address()]))
    with pytest.raises(clientlb.ConfigError, match="server_hostname: a static target"):
        clientlb.connect(lb, ssl_context=client_ctx)


@pytest.mark.parametrize(("option", "value", "rule"), [
    ("timeout", 0, "timeout must be a number of seconds > 0, got 0"),
    ("attempts", 0, "attempts must be an integer >= 1, got 0"),
    ("deadline", -1, "deadline must be a number of seconds > 0 or None, got -1"),
])
def test_invalid_options_are_config_errors(option: str, value: float, rule: str) -> None:
    lb = closing(clientlb.LoadBalancer([dead_address()]))
    with pytest.raises(clientlb.ConfigError, match=rule) as info:
        clientlb.connect(lb, **{option: value})
    assert info.value.field == option


def test_no_endpoint_is_also_a_connection_error() -> None:
    """Socket code that catches ConnectionError also catches NoEndpointAvailable."""
    lb = closing(clientlb.LoadBalancer([dead_address()]))
    lb.close()
    with pytest.raises(ConnectionError) as info:
        clientlb.connect(lb)
    assert isinstance(info.value, clientlb.NoEndpointAvailable)


def test_connection_is_in_flight_until_closed(servers: list[EchoServer]) -> None:
    """The pick stays in flight while the socket is open; close() completes it."""
    lb = closing(clientlb.LoadBalancer([servers[0].address]))
    rec = Recorder(lb)
    sock = clientlb.connect(lb, timeout=2)
    assert isinstance(sock, clientlb.BalancedSocket)
    assert in_flight(lb) == {servers[0].address: 1}
    assert rec.events == []
    sock.close()
    assert in_flight(lb) == {servers[0].address: 0}
    sock.close()  # idempotent: one outcome only
    assert rec.outcomes() == [Outcome.SUCCESS]


def test_garbage_collected_socket_completes_its_pick(servers: list[EchoServer]) -> None:
    """A socket dropped without close() frees its in-flight slot when collected."""
    lb = closing(clientlb.LoadBalancer([servers[0].address]))
    rec = Recorder(lb)
    sock = clientlb.connect(lb, timeout=2)
    assert in_flight(lb) == {servers[0].address: 1}
    with pytest.warns(ResourceWarning):
        del sock
        gc.collect()
    assert in_flight(lb) == {servers[0].address: 0}
    assert rec.outcomes() == [Outcome.CANCELLED]


def test_latency_recorded_is_the_connect_time_not_the_lifetime(
        servers: list[EchoServer], clock: FakeClock) -> None:
    """A connection held for 100 s (fake clock) reports its connect time, not 100 s."""
    lb = closing(clientlb.LoadBalancer([servers[0].address], clock=clock))
    rec = Recorder(lb)
    with clientlb.connect(lb, timeout=2) as sock:
        clock.advance(100)
    assert rec.events == [(servers[0].address, Outcome.SUCCESS, sock.connect_latency)]
    assert sock.connect_latency < 1


def test_set_outcome_is_reported_when_the_connection_closes(
        servers: list[EchoServer]) -> None:
    """An application that saw a protocol error marks the connection; close reports it."""
    lb = closing(clientlb.LoadBalancer([servers[0].address]))
    rec = Recorder(lb)
    with clientlb.connect(lb, timeout=2) as sock:
        sock.set_outcome(Outcome.FAILURE)
        assert rec.events == []
    assert rec.outcomes() == [Outcome.FAILURE]


def test_connections_held_open_steer_least_request(servers: list[EchoServer]) -> None:
    """least_request counts open connections: held ones push new ones elsewhere."""
    a, b = servers[0], servers[1]
    lb = closing(clientlb.LoadBalancer([a.address, b.address], strategy="least_request"))
    held = [clientlb.connect(lb, timeout=2) for _ in range(10)]
    assert in_flight(lb) == {a.address: 5, b.address: 5}
    for sock in held:
        if sock.endpoint.address == a.address:
            sock.close()
    assert in_flight(lb) == {a.address: 0, b.address: 5}
    more = [clientlb.connect(lb, timeout=2) for _ in range(5)]
    assert {s.endpoint.address for s in more} == {a.address}
    assert in_flight(lb) == {a.address: 5, b.address: 5}
    for sock in held + more:
        sock.close()


# -- asyncio ----------------------------------------------------------------------------


async def read_greeting(reader: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()


async def async_wait_until(predicate: Any, message: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` without blocking the loop; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.005)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def test_async_connections_spread_and_skip_a_dead_port(servers: list[EchoServer]) -> None:
    """open_connection: round robin over two live servers and a dead port, no error."""
    dead = dead_address()

    async def main() -> list[str]:
        lb = closing(clientlb.LoadBalancer([servers[0].address, dead, servers[1].address],
                                   strategy="round_robin"))
        rec = Recorder(lb)
        names = []
        for _ in range(6):
            reader, writer = await clientlb.open_connection(lb, timeout=2)
            assert isinstance(writer, clientlb.BalancedStreamWriter)
            names.append(await read_greeting(reader))
            writer.write(b"hello\n")
            assert await reader.readline() == b"hello\n"
            await close(writer)
        assert set(rec.outcomes(dead)) == {Outcome.CONNECT_FAILURE}
        assert all(n == 0 for n in in_flight(lb).values())
        await lb.aclose()
        return names

    names = asyncio.run(main())
    assert sorted(set(names)) == ["s0", "s1"]
    assert len(names) == 6


def test_async_every_endpoint_dead_raises_connect_error() -> None:
    dead = [dead_address(), dead_address()]

    async def main() -> None:
        lb = closing(clientlb.LoadBalancer(dead, name="queue"))
        with pytest.raises(clientlb.ConnectError) as info:
            await clientlb.open_connection(lb, timeout=1)
        assert sorted(info.value.tried) == sorted(dead)
        assert isinstance(info.value, ConnectionError)

    asyncio.run(main())


def test_async_connection_in_flight_until_writer_closed(servers: list[EchoServer]) -> None:
    """The pick completes when the writer is closed, with the connect time as latency."""

    async def main() -> None:
        clock = FakeClock()
        lb = closing(clientlb.LoadBalancer([servers[0].address], clock=clock))
        rec = Recorder(lb)
        reader, writer = await clientlb.open_connection(lb, timeout=2)
        assert await read_greeting(reader) == "s0"
        assert in_flight(lb) == {servers[0].address: 1}
        clock.advance(50)
        await close(writer)
        assert in_flight(lb) == {servers[0].address: 0}
        assert rec.events == [(servers[0].address, Outcome.SUCCESS, writer.connect_latency)]

    asyncio.run(main())


def test_async_connection_reset_by_the_peer_completes_the_pick_as_failure(
        servers: list[EchoServer]) -> None:
    """A connection the server resets frees its slot, as a failure, before any close()."""

    async def main() -> None:
        lb = closing(clientlb.LoadBalancer([servers[0].address]))
        rec = Recorder(lb)
        reader, writer = await clientlb.open_connection(lb, timeout=2)
        assert await read_greeting(reader) == "s0"
        writer.write(b"RESET\n")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        # connection_lost runs a loop iteration or two after the reset
        await async_wait_until(lambda: in_flight(lb)[servers[0].address] == 0,
                               "the pick to complete")
        assert rec.outcomes() == [Outcome.FAILURE]
        writer.close()  # one outcome only
        assert rec.outcomes() == [Outcome.FAILURE]

    asyncio.run(main())


def test_async_tls_right_name_accepted_wrong_name_refused(
        tls_servers: list[EchoServer], client_ctx: ssl.SSLContext) -> None:

    async def main() -> None:
        lb = closing(clientlb.LoadBalancer([s.address for s in tls_servers], name=TLS_NAME))
        reader, writer = await clientlb.open_connection(lb, ssl=client_ctx, timeout=2)
        assert (await read_greeting(reader)) in {"t0", "t1"}
        assert writer.get_extra_info("ssl_object").server_hostname == TLS_NAME
        await close(writer)
        rec = Recorder(lb)
        with pytest.raises(clientlb.ConnectError) as info:
            await clientlb.open_connection(lb, ssl=client_ctx, server_hostname="evil.example",
                                           timeout=2)
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        assert rec.outcomes() == [Outcome.CONNECT_FAILURE, Outcome.CONNECT_FAILURE]
        assert all(n == 0 for n in in_flight(lb).values())

    asyncio.run(main())


def test_async_held_connections_steer_least_request(servers: list[EchoServer]) -> None:

    async def main() -> None:
        a, b = servers[0], servers[1]
        lb = closing(clientlb.LoadBalancer([a.address, b.address], strategy="least_request"))
        held = [await clientlb.open_connection(lb, timeout=2) for _ in range(6)]
        assert in_flight(lb) == {a.address: 3, b.address: 3}
        for _, writer in held:
            if writer.endpoint.address == b.address:
                await close(writer)
        more = [await clientlb.open_connection(lb, timeout=2) for _ in range(3)]
        assert {w.endpoint.address for _, w in more} == {b.address}
        for _, writer in held + more:
            if not writer.is_closing():
                await close(writer)
        assert in_flight(lb) == {a.address: 0, b.address: 0}

    asyncio.run(main())


def test_async_cancelled_connect_is_reported_as_cancelled() -> None:
    """A caller that gives up mid-connect frees the slot and blames no endpoint."""
    silent = EchoServer("mute", silent=True)

    async def main() -> None:
        lb = closing(clientlb.LoadBalancer([silent.address], name=TLS_NAME))
        rec = Recorder(lb)
        ctx = ssl.create_default_context()
        task = asyncio.ensure_future(clientlb.open_connection(lb, ssl=ctx, timeout=5))
        await async_wait_until(lambda: silent.accepted, "the TCP connect")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rec.outcomes() == [Outcome.CANCELLED]
        assert in_flight(lb) == {silent.address: 0}

    try:
        asyncio.run(main())
    finally:
        silent.close()


# -- any driver -------------------------------------------------------------------------


class DriverError(Exception):
    """What a database driver raises when it cannot connect."""


def fake_driver_connect(endpoint: clientlb.Endpoint) -> socket.socket:
    """A driver's connect: opens its own socket, wraps the refusal in its own error."""
    try:
        return socket.create_connection((endpoint.host, endpoint.port), timeout=2)
    except OSError as exc:
        raise DriverError(f"could not connect to {endpoint.address}: {exc}") from exc


def test_connect_with_fails_over_on_the_driver_connect_error(
        servers: list[EchoServer]) -> None:
    """connect_with: the driver's connect error is a connect failure and is failed over."""
    dead = dead_address()
    lb = closing(clientlb.LoadBalancer([dead, servers[0].address], strategy="random"))
    rec = Recorder(lb)
    for _ in range(20):
        conn, pick = clientlb.connect_with(lb, fake_driver_connect,
                                           connect_errors=DriverError)
        with pick, conn:
            assert greeting(conn) == "s0"
            assert in_flight(lb)[servers[0].address] == 1
    assert rec.outcomes(dead) and set(rec.outcomes(dead)) == {Outcome.CONNECT_FAILURE}
    assert rec.outcomes(servers[0].address) == [Outcome.SUCCESS] * 20


def test_connect_with_other_errors_propagate_as_failures(servers: list[EchoServer]) -> None:
    """An error that is not a connect error is not failed over: reported and raised."""
    lb = closing(clientlb.LoadBalancer([servers[0].address, servers[1].address]))
    rec = Recorder(lb)

    def broken(endpoint: clientlb.Endpoint) -> None:
        raise KeyError("bad configuration")

    with pytest.raises(KeyError):
        clientlb.connect_with(lb, broken, connect_errors=DriverError)
    assert rec.outcomes() == [Outcome.FAILURE]


def test_connect_with_every_endpoint_down_raises_connect_error() -> None:
    dead = [dead_address(), dead_address()]
    lb = closing(clientlb.LoadBalancer(dead, name="db"))
    with pytest.raises(clientlb.ConnectError) as info:
        clientlb.connect_with(lb, fake_driver_connect, connect_errors=DriverError)
    assert sorted(info.value.tried) == sorted(dead)
    assert isinstance(info.value.__cause__, DriverError)
    assert "could not connect to 'db'" in str(info.value)


def test_connect_with_rejects_a_non_exception_class() -> None:
    lb = closing(clientlb.LoadBalancer([dead_address()]))
    with pytest.raises(clientlb.ConfigError, match="connect_errors must be an exception class"):
        clientlb.connect_with(lb, fake_driver_connect, connect_errors="OSError")  # type: ignore[arg-type]


def test_aconnect_with_fails_over(servers: list[EchoServer]) -> None:
    dead = dead_address()

    async def driver(endpoint: clientlb.Endpoint) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
        return await asyncio.open_connection(endpoint.host, endpoint.port)

    async def main() -> None:
        lb = closing(clientlb.LoadBalancer([dead, servers[0].address], strategy="round_robin"))
        rec = Recorder(lb)
        for _ in range(4):
            (reader, writer), pick = await clientlb.aconnect_with(lb, driver)
            with pick:
                assert await read_greeting(reader) == "s0"
                await close(writer)
        assert set(rec.outcomes(dead)) == {Outcome.CONNECT_FAILURE}
        assert rec.outcomes(servers[0].address) == [Outcome.SUCCESS] * 4

    asyncio.run(main())


def test_dup_of_a_balanced_socket_is_independent_and_untracked(
        servers: list[EchoServer]) -> None:
    """dup() gives a plain duplicate: closing it neither fails nor completes the pick."""
    lb = closing(clientlb.LoadBalancer([servers[0].address]))
    with clientlb.connect(lb, timeout=2) as sock:
        twin = sock.dup()
        twin.close()
        assert in_flight(lb) == {servers[0].address: 1}
        with pytest.raises(RuntimeError, match="not tracked by a balancer"):
            twin.set_outcome(Outcome.FAILURE)  # type: ignore[attr-defined]
    assert in_flight(lb) == {servers[0].address: 0}


def test_tls_name_of_an_srv_target_drops_the_service_labels() -> None:
    """_pg._tcp.db.example is served with a certificate for db.example (RFC 6125)."""
    from types import SimpleNamespace

    from clientlb._tcp import _tls_name

    target = clientlb.parse_target("srv:///_pg._tcp.db.example")
    lb = SimpleNamespace(name=target.service, target=target)
    name = _tls_name(lb, None, ssl.create_default_context())  # type: ignore[arg-type]
    assert name(clientlb.Endpoint("10.0.0.1", 5432)) == "db.example"
    named = SimpleNamespace(name="replicas.internal", target=target)
    name = _tls_name(named, None, ssl.create_default_context())  # type: ignore[arg-type]
    assert name(clientlb.Endpoint("10.0.0.1", 5432)) == "replicas.internal"


def test_tls_without_hostname_check_needs_no_name(tls_servers: list[EchoServer]) -> None:
    """A context that does not check host names works over a static target, sync and async."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    lb = closing(clientlb.LoadBalancer([tls_servers[0].address]))
    with clientlb.connect(lb, timeout=2, ssl_context=ctx) as sock:
        assert sock.server_hostname is None
        assert greeting(sock) == "t0"

    async def main() -> None:
        reader, writer = await clientlb.open_connection(lb, ssl=ctx, timeout=2)
        assert await read_greeting(reader) == "t0"
        await close(writer)

    asyncio.run(main())


def test_failover_is_visible_on_the_callers_span() -> None:
    """With telemetry, each connect attempt and each failover is an event on the span."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    lb = closing(clientlb.LoadBalancer([dead_address(), dead_address()], name="cache"))
    telemetry = clientlb.Telemetry(
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    telemetry.instrument(lb)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("query"), \
            pytest.raises(clientlb.ConnectError) as info:
        clientlb.connect(lb, timeout=2)
    telemetry.uninstrument(lb)
    (span,) = exporter.get_finished_spans()
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert [name for name, _ in events] == ["clientlb.attempt", "clientlb.retry",
                                            "clientlb.attempt"]
    first, retry, second = (attrs for _, attrs in events)
    assert first["clientlb.outcome"] == second["clientlb.outcome"] == "connect_failure"
    assert retry["clientlb.retry.reason"] == "connect_failure"
    assert retry["clientlb.endpoint"] == info.value.tried[0]


# -- a target instead of a balancer (issue 14) -------------------------------------------


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[clientlb.LoadBalancer]:
    """The balancers clientlb builds from a target string, to see when they close."""
    made: list[clientlb.LoadBalancer] = []

    class Recording(clientlb.LoadBalancer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(clientlb._tcp, "LoadBalancer", Recording)
    return made


def test_connect_takes_a_target_and_closes_its_balancer_with_the_connection(
        servers: list[EchoServer], built: list[clientlb.LoadBalancer]) -> None:
    """``connect("static://...")`` as the HTTP and gRPC integrations take a target: the
    balancer it builds belongs to the connection and is closed when the socket is."""
    target = "static://" + ",".join(s.address for s in servers)
    with clientlb.connect(target, timeout=2) as sock:
        assert greeting(sock) in {"s0", "s1", "s2"}
        (lb,) = built
        assert not lb.closed
    assert lb.closed
    with clientlb.connect([dead_address(), servers[0].address], timeout=2) as sock:
        assert greeting(sock) == "s0"
    assert built[1].closed


def test_connect_to_a_target_that_fails_closes_its_balancer(
        built: list[clientlb.LoadBalancer]) -> None:
    with pytest.raises(clientlb.ConnectError):
        clientlb.connect(f"static://{dead_address()}", timeout=2)
    with pytest.raises(clientlb.ConfigError, match="server_hostname"):
        clientlb.connect(f"static://{dead_address()}", ssl_context=ssl.create_default_context())
    assert len(built) == 2 and all(lb.closed for lb in built)


def test_connect_with_a_target_closes_its_balancer_when_the_pick_is_done(
        servers: list[EchoServer], built: list[clientlb.LoadBalancer]) -> None:
    conn, pick = clientlb.connect_with(f"static://{servers[0].address}", fake_driver_connect,
                                       connect_errors=DriverError)
    with pick, conn:
        assert greeting(conn) == "s0"
        assert not built[0].closed
    assert built[0].closed


def test_async_twins_take_a_target_and_close_its_balancer_with_the_connection(
        servers: list[EchoServer], built: list[clientlb.LoadBalancer]) -> None:
    target = f"static://{dead_address()},{servers[1].address}"

    async def driver(endpoint: clientlb.Endpoint) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
        return await asyncio.open_connection(endpoint.host, endpoint.port)

    async def main() -> None:
        reader, writer = await clientlb.open_connection(target)
        assert await read_greeting(reader) == "s1"
        assert not built[0].closed
        await close(writer)
        await async_wait_until(lambda: built[0].closed, "the balancer closed")
        (reader, writer), pick = await clientlb.aconnect_with(target, driver)
        with pick:
            assert await read_greeting(reader) == "s1"
            await close(writer)
        assert built[1].closed
        with pytest.raises(clientlb.ConnectError):
            await clientlb.open_connection(f"static://{dead_address()}")
        assert built[2].closed

    asyncio.run(main())
