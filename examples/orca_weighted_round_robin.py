"""Servers that report their load, clients that balance by it (ORCA, weighted_round_robin).

Two HTTP backends of unequal capacity (an ASGI app under uvicorn, with
clientlb.orca.OrcaMiddleware) balanced by httpx, and two gRPC backends (grpcio,
with clientlb.orca.OrcaServerInterceptor) balanced by a clientlb.grpc channel,
both with strategy weighted_round_robin. Everything runs on 127.0.0.1.

Run: python examples/orca_weighted_round_robin.py
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import httpx
import uvicorn

import clientlb
import clientlb.grpc
from clientlb import orca


# --8<-- [start:server]
def create_app(name: str, capacity: float) -> orca.OrcaMiddleware:
    """An ASGI app whose responses carry an ORCA load report."""
    metrics = orca.ServerMetrics()  # measures CPU, counts qps and errors
    # What "busy" means is the application's call: here, requests per second
    # against what this server can take. weighted_round_robin uses it, not the CPU.
    metrics.set_application_utilization(lambda: metrics.qps() / capacity)

    async def app(scope, receive, send):  # any ASGI app: FastAPI, Starlette, ...
        orca.call_metrics().set_request_cost("db_queries", 2)  # per response, optional
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-backend", name.encode())]})
        await send({"type": "http.response.body", "body": name.encode()})

    return orca.OrcaMiddleware(app, metrics)  # adds the endpoint-load-metrics header
# --8<-- [end:server]


def serve(app: orca.OrcaMiddleware) -> str:
    """Run ``app`` under uvicorn in a thread; its address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"127.0.0.1:{sock.getsockname()[1]}"


small = serve(create_app("small", capacity=100))
large = serve(create_app("large", capacity=400))

with httpx.Client() as plain:
    header = plain.get(f"http://{small}/").headers["endpoint-load-metrics"]
print("report:", header.split()[0], sorted(orca.parse_header(header).request_cost.items()))

# --8<-- [start:client]
wrr = clientlb.WeightedRoundRobin(blackout_period=0,       # default: 10 s of reports first
                                  weight_update_period=0.1)  # default: 1 s
lb = clientlb.LoadBalancer([small, large], name="api", strategy=wrr)
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://api")
while len({row.load_weight for row in lb.snapshot().endpoints}) < 2:
    client.get("/")                                  # the reports come back with the answers
weights = {row.address: row.load_weight for row in lb.snapshot().endpoints}
print(f"weights: large/small = {weights[large] / weights[small]:.0f}")  # 4: their capacities
served = Counter(client.get("/").headers["x-backend"] for _ in range(100))
print(f"large served about {round(served['large'] / 20)} requests in 5")  # 4
# --8<-- [end:client]
assert 70 <= served["large"] <= 90, served
client.close()
lb.close()


# --8<-- [start:grpc]
def grpc_backend(name: str, capacity: float) -> grpc.Server:
    metrics = orca.ServerMetrics()
    metrics.set_application_utilization(lambda: metrics.qps() / capacity)
    metrics.set_named_metric("queue_length", 3)

    def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(4),
                         interceptors=[orca.OrcaServerInterceptor(metrics)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "demo.Hello", {"Say": grpc.unary_unary_rpc_method_handler(hello)}),))
    server.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server


servers = [grpc_backend("small", 100), grpc_backend("large", 400)]
with clientlb.grpc.insecure_channel([f"127.0.0.1:{s.port}" for s in servers],
                                    strategy=wrr) as channel:
    say = channel.unary_unary("/demo.Hello/Say")
    while len({row.load_weight for row in channel.lb.snapshot().endpoints}) < 2:
        say(b"")                                     # the channel reads every call's trailers
    served = Counter(say(b"").decode() for _ in range(100))
    _, call = say.with_call(b"")
print(f"grpc: large served about {round(served['large'] / 20)} calls in 5")  # 4
report = orca.parse_header(dict(call.trailing_metadata())["endpoint-load-metrics"])
print("grpc report: queue_length =", report.named_metrics["queue_length"])  # 3.0
# --8<-- [end:grpc]
assert 70 <= served["large"] <= 90, served
for s in servers:
    s.stop(None)
print("ok")
