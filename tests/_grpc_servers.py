"""Real grpcio servers on 127.0.0.1 for the gRPC tests (generic handlers, raw bytes).

``GrpcBackend(name)`` serves ``/demo.Echo/{Unary,UStream,SUnary,SStream}``
and ``grpc.health.v1.Health``. Every response names the backend (so a test
sees where a call went) and the trailing metadata carries ``backend=<name>``.
``port=`` listens on a given port (default: any free one). Controls: ``status`` (a
``grpc.StatusCode`` every call is aborted with),
``delay`` (seconds before answering), ``hold`` (an Event a stream waits for
before it ends), ``calls`` (method names received) and ``metadata`` (the
invocation metadata of the last call).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

import clientlb

UNARY = "/demo.Echo/Unary"
USTREAM = "/demo.Echo/UStream"
SUNARY = "/demo.Echo/SUnary"
SSTREAM = "/demo.Echo/SStream"


def outcomes_of(lb: clientlb.LoadBalancer) -> list[tuple[str, clientlb.Outcome]]:
    """The ``(address, outcome)`` of every outcome ``lb`` reports from now on."""
    seen: list[tuple[str, clientlb.Outcome]] = []
    lb.add_outcome_listener(lambda state, outcome, latency, now: seen.append(
        (state.address, outcome)))
    return seen


class GrpcBackend:
    def __init__(self, name: str, *, credentials: grpc.ServerCredentials | None = None,
                 workers: int = 8, port: int = 0) -> None:
        self.name = name
        self.status: grpc.StatusCode | None = None
        self.delay = 0.0
        self.hold: threading.Event | None = None
        self.calls: list[str] = []
        self.metadata: dict[str, Any] = {}
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler("demo.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "UStream": grpc.unary_stream_rpc_method_handler(self._ustream),
            "SUnary": grpc.stream_unary_rpc_method_handler(self._sunary),
            "SStream": grpc.stream_stream_rpc_method_handler(self._sstream),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(workers))
        self.server.add_generic_rpc_handlers((handler,))
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(method)
        self.metadata = dict(context.invocation_metadata())
        context.set_trailing_metadata((("backend", self.name),))
        if self.delay:
            time.sleep(self.delay)
        if self.status is not None:
            context.abort(self.status, f"{self.name} says {self.status.name}")

    def count(self, method: str = "Unary") -> int:
        with self._lock:
            return self.calls.count(method)

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter("Unary", context)
        return self.name.encode()

    def _ustream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter("UStream", context)
        yield f"{self.name}:0".encode()
        if self.hold is not None:
            self.hold.wait(10)
        for i in range(1, 3):
            yield f"{self.name}:{i}".encode()

    def _sunary(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter("SUnary", context)
        return f"{self.name}:{sum(1 for _ in requests)}".encode()

    def _sstream(self, requests: Iterator[bytes], context: grpc.ServicerContext
                 ) -> Iterator[bytes]:
        self._enter("SStream", context)
        for r in requests:
            yield r + b"@" + self.name.encode()

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.stop(None).wait(5)


class ProcessBackend:
    """A GrpcBackend in a child process, so that a test can kill it for real (SIGKILL)."""

    def __init__(self, name: str) -> None:
        import os
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "tests._grpc_servers", name],
                                     cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            raise RuntimeError(f"backend {name} did not start: {line!r}")
        self.port = int(line)
        self.address = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    import sys

    backend = GrpcBackend(sys.argv[1])
    print(backend.port, flush=True)
    sys.stdin.read()  # until the parent closes stdin or kills us
    backend.stop()
