"""The async transport and the balancer under trio (httpx runs on trio through anyio).

Nothing here uses asyncio: the balancer created inside ``trio.run`` resolves and
checks health on its own threads, the first request awaits the first resolution,
back-offs sleep through anyio, and ``aclose()`` works.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tenacity
import trio

import clientlb

from ._helpers import HTTPBackend, free_port
from .conftest import require_binary
from .dns_server import KnotServer

FAST = clientlb.RetryPolicy(backoff=tenacity.wait_fixed(0.01))  # a real (anyio) sleep


@pytest.fixture
def backends() -> Iterator[list[HTTPBackend]]:
    started = [HTTPBackend(f"b{i}") for i in range(2)]
    yield started
    for b in started:
        b.close()


def test_requests_are_balanced_and_retried_under_trio(backends: list[HTTPBackend]) -> None:
    """A static target, a dead endpoint, a 503: every request gets a 200 from a live one."""
    backends[1].status = 503
    dead = f"127.0.0.1:{free_port()}"

    async def main() -> list[str]:
        lb = clientlb.LoadBalancer([backends[0].address, backends[1].address, dead],
                                   name="users", strategy="round_robin", retry=FAST,
                                   outlier_detection=None)
        async with httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb)) as client:
            answers = []
            for _ in range(6):
                response = await client.get("http://users/")
                assert response.status_code == 200
                answers.append(response.text.strip())
            async with client.stream("GET", "http://users/") as streamed:
                assert (await streamed.aread()).strip() == b"b0"
        await lb.aclose()
        assert lb.closed
        return answers

    assert set(trio.run(main)) == {"b0"}


@pytest.mark.servers
def test_a_dns_target_created_under_trio_answers_the_first_request(
        tmp_path: Path, backends: list[HTTPBackend]) -> None:
    """dns:// inside trio.run: the first request waits for the first resolution without
    an asyncio loop, and the transport closes the balancer it owns."""
    knot = KnotServer(require_binary("knotd", "/usr/sbin/knotd"), tmp_path / "knot",
                      records="users A 127.0.0.1\n")
    port = backends[0].address.rsplit(":", 1)[1]
    try:
        async def main() -> tuple[int, str, bool]:
            transport = clientlb.AsyncHTTPTransport(
                f"dns://{knot.server}/users.test:{port}")
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.get("http://users.test/")
            return response.status_code, response.text.strip(), transport.lb.closed

        assert trio.run(main) == (200, "b0", True)
    finally:
        knot.close()
