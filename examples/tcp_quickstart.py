"""Balanced raw TCP, with and without TLS, from threads and from asyncio.

Starts three line-echo servers on 127.0.0.1 (plus a port where nothing
listens) and a TLS twin of them whose certificate is for ``echo.internal``
(a throwaway CA from ``trustme``), then:

1. ``clientlb.connect``: six connections spread over the servers; the dead
   port is tried, reported as a connect failure and never seen by the caller;
2. connections held open steer ``least_request`` (each open connection is in
   flight until it is closed);
3. TLS: the certificate is verified against the logical name ``echo.internal``
   while the connection goes to 127.0.0.1;
4. ``clientlb.open_connection``: the same from asyncio.

Run: ``python examples/tcp_quickstart.py`` (needs the ``trustme`` dev package).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import socketserver
import ssl
import threading

import trustme

import clientlb


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        name = self.server.name  # type: ignore[attr-defined]
        self.wfile.write(f"hello from {name}\n".encode())
        for line in self.rfile:
            self.wfile.write(line)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.name = name
        self.tls = tls
        self.address = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock.settimeout(5)
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a refused handshake is the point of one demonstration


def dead_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def readline(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def main() -> None:
    servers = [EchoServer(f"echo{i}") for i in range(3)]
    dead = dead_port()

    # 1. Spread, and a dead port that never surfaces as an error.
    # --8<-- [start:connect]
    lb = clientlb.LoadBalancer([s.address for s in servers] + [dead],
                               strategy="round_robin")
    seen = collections.Counter()
    for _ in range(6):
        with clientlb.connect(lb, timeout=2.0) as sock:   # a socket.socket subclass
            seen[readline(sock)] += 1                       # "hello from echo1"
            sock.sendall(b"ping\n")
            assert readline(sock) == "ping"
    # --8<-- [end:connect]
    failures = lb.snapshot().by_address()[dead].failures
    print(f"1. six connections: {dict(sorted(seen.items()))}; "
          f"dead port tried {failures}x, no error surfaced")

    # 2. Connections held open count as in flight for least_request.
    lb2 = clientlb.LoadBalancer([s.address for s in servers[:2]], strategy="least_request")
    held = [clientlb.connect(lb2, timeout=2.0) for _ in range(4)]
    for sock in held:
        if sock.endpoint.address == servers[0].address:
            sock.close()
    fresh = [clientlb.connect(lb2, timeout=2.0) for _ in range(2)]
    names = {s.address: s.name for s in servers}
    in_flight = {names[e.address]: e.in_flight for e in lb2.snapshot().endpoints}
    print(f"2. echo0's connections closed; the next two went to "
          f"{[names[s.endpoint.address] for s in fresh]}; open now: {in_flight}")
    for sock in held + fresh:
        sock.close()

    # 3. TLS, verified against the logical name while connecting to an IP.
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("echo.internal").configure_cert(server_ctx)
    tls_servers = [EchoServer(f"tls{i}", tls=server_ctx) for i in range(2)]
    # --8<-- [start:tls]
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)      # or ssl.create_default_context(cafile="ca.pem")
    tls_lb = clientlb.LoadBalancer([s.address for s in tls_servers], name="echo.internal")
    with clientlb.connect(tls_lb, timeout=2.0, ssl_context=client_ctx) as tls_sock:
        # connected to 127.0.0.1, the certificate verified as echo.internal
        # --8<-- [end:tls]
        print(f"3. TLS to {tls_sock.getpeername()[0]} verified as "
              f"{tls_sock.server_hostname!r}: {readline(tls_sock)!r}")
    try:
        clientlb.connect(tls_lb, timeout=2.0, ssl_context=client_ctx,
                         server_hostname="evil.example")
    except clientlb.ConnectError as exc:
        print(f"   wrong name refused: {type(exc.__cause__).__name__}")

    # 4. asyncio.
    async def use_asyncio() -> None:
        # --8<-- [start:asyncio]
        reader, writer = await clientlb.open_connection(lb, timeout=2.0)
        greeting = (await reader.readline()).decode().strip()
        writer.write(b"async ping\n")
        echoed = (await reader.readline()).decode().strip()
        writer.close()
        await writer.wait_closed()        # the pick completes here
        # --8<-- [end:asyncio]
        print(f"4. asyncio: {greeting!r}, echoed {echoed!r} from {writer.endpoint.address}")

    asyncio.run(use_asyncio())

    # 5. Any driver that opens its own connection: the generic pattern.
    # --8<-- [start:generic]
    with lb.pick() as p:
        conn = socket.create_connection((p.endpoint.host, p.endpoint.port), timeout=2.0)
        with conn:
            greeting = readline(conn)     # use it
    # leaving the block reports success — or a failure if it raised
    # --8<-- [end:generic]
    print(f"5. generic pattern: {greeting!r} from {p.endpoint.address}")

    # 6. A target instead of a balancer: the balancer built for it closes with the socket.
    # --8<-- [start:target]
    with clientlb.connect(f"static://{servers[0].address},{dead}", timeout=2.0) as sock:
        greeting = readline(sock)
    # --8<-- [end:target]
    print(f"6. connect(target): {greeting!r}")

    for server in servers + tls_servers:
        server.shutdown()
        server.server_close()
    for balancer in (lb, lb2, tls_lb):
        balancer.close()


if __name__ == "__main__":
    main()
