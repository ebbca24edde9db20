"""Shared fixtures: a fake clock, seeded randomness, and real-server helpers."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator

import pytest

from ._helpers import FakeClock, close_registered

REQUIRE_SERVERS = os.environ.get("CLIENTLB_REQUIRE_SERVERS") == "1"


def require_binary(name: str, *candidates: str) -> str:
    """Path of a server binary; skip the test without it, or fail under CI's
    ``CLIENTLB_REQUIRE_SERVERS=1``."""
    for cand in (name, *candidates):
        path = shutil.which(cand) or (cand if os.path.isabs(cand) and os.access(cand, os.X_OK)
                                      else None)
        if path:
            return path
    message = f"{name} is not installed (CI installs it in .ci/run)"
    if REQUIRE_SERVERS:
        pytest.fail(message + " and CLIENTLB_REQUIRE_SERVERS=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _close_helper_balancers() -> Iterator[None]:
    """Close the balancers test helpers built (``_helpers.closing``) after each test."""
    yield
    close_registered()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def http_backends() -> Iterator[list]:  # type: ignore[type-arg]
    """Three real HTTP servers on loopback (see ``tests/_helpers.HTTPBackend``)."""
    from ._helpers import HTTPBackend

    backends = [HTTPBackend(f"b{i}") for i in range(3)]
    try:
        yield backends
    finally:
        for b in backends:
            b.close()


@pytest.fixture(name="backends")
def grpc_backends() -> Iterator[list]:  # type: ignore[type-arg]
    """Three real gRPC servers on loopback, b0..b2 (see ``tests/_grpc_servers.py``); test
    modules with backends of another kind define their own ``backends``."""
    from ._grpc_servers import GrpcBackend

    servers = [GrpcBackend(f"b{i}") for i in range(3)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(autouse=True)
def _probes_stay_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Background reconnect probes (clientlb._engine.connectivity) only ever touch
    loopback: many unit tests use documentation addresses such as 10.0.0.1, which
    must never receive a packet from this machine."""
    import ipaddress

    from clientlb._engine import connectivity

    real = connectivity.tcp_probe

    def loopback_only(endpoint, timeout):  # type: ignore[no-untyped-def]
        try:
            loopback = endpoint.host == "localhost" or ipaddress.ip_address(
                endpoint.host).is_loopback
        except ValueError:
            loopback = False
        return real(endpoint, timeout) if loopback else False

    monkeypatch.setattr(connectivity, "tcp_probe", loopback_only)
