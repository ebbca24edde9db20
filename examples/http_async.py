"""Balanced ``httpx.AsyncClient`` over three uvicorn backends, one answering 503.

Starts three real ASGI servers (uvicorn) on loopback ports inside this event
loop; ``gamma`` answers every request with ``503 Service Unavailable``. 200
concurrent GETs go through a :class:`clientlb.AsyncHTTPTransport`: a GET is
idempotent, so a 503 is retried on another backend (never the same one twice,
within the balancer's retry budget) and no caller ever sees it. Then a
streamed download shows that a response stays *in flight* for the load
metrics until it is closed.

Run::

    python examples/http_async.py
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import Any

import httpx
import uvicorn

import clientlb


def make_app(name: str, status: int) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/download":  # a slow, chunked body
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(3):
                await send({"type": "http.response.body", "body": b"x" * 1000,
                            "more_body": True})
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b""})
            return
        body = f"{name}\n".encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="log: %(message)s")
    servers, addresses = [], []
    for name, status in (("alpha", 200), ("beta", 200), ("gamma", 503)):
        port = free_port()
        config = uvicorn.Config(make_app(name, status), host="127.0.0.1", port=port,
                                log_level="error", lifespan="off")
        servers.append(uvicorn.Server(config))
        addresses.append(f"127.0.0.1:{port}")
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers):
        await asyncio.sleep(0.01)

    # --- the part you would write -----------------------------------------------------------
    lb = clientlb.LoadBalancer(addresses, name="catalog", strategy="least_request")
    transport = clientlb.AsyncHTTPTransport(lb)
    async with httpx.AsyncClient(transport=transport, base_url="http://catalog") as client:
        responses = await asyncio.gather(*(client.get("/items") for _ in range(200)))
        statuses = collections.Counter(r.status_code for r in responses)
        served = collections.Counter(r.text.strip() for r in responses)
        print(f"statuses seen by callers: {dict(statuses)}")
        print(f"served by: {dict(sorted(served.items()))}")

        async with client.stream("GET", "/download") as response:
            where = response.extensions["clientlb.endpoint"]
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                state = lb.state_of(where)
                assert state is not None
                print(f"downloading from {where}: {size} bytes, in flight: "
                      f"{state.load.in_flight}")
        state = lb.state_of(where)
        assert state is not None
        print(f"closed: in flight {state.load.in_flight}")
    budget = lb.retry_budget
    assert budget is not None
    print(f"retries: {budget.statistics()['retries']} for {budget.statistics()['requests']} "
          "requests")
    # -----------------------------------------------------------------------------------------

    await lb.aclose()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
