"""What ``import clientlb`` costs and exposes, and what the package declares (issue 14)."""

from __future__ import annotations

import subprocess
import sys

import clientlb

#: Top-level packages that ``import clientlb`` must not load: the integrations and
#: discovery load on first use (clientlb/__init__.py, ``_LAZY``).
HEAVY = ("httpx", "httpcore", "h11", "h2", "anyio", "dns", "grpc", "opentelemetry", "rich",
         "starlette")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.strip()


def test_import_clientlb_loads_no_integration_nor_discovery_library() -> None:
    """A fresh interpreter: after ``import clientlb`` none of httpx, httpcore, dnspython,
    grpcio or OpenTelemetry is in sys.modules (they made ``import clientlb`` ~100 ms)."""
    loaded = _run("import sys, clientlb; "
                  "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))").split()
    assert sorted(set(HEAVY) & set(loaded)) == []


def test_lazy_names_load_on_first_use_and_are_the_real_objects() -> None:
    """``clientlb.HTTPTransport`` and ``from clientlb import connect`` import their module
    on first access; an unknown name is still an AttributeError."""
    out = _run("import sys, clientlb\n"
               "from clientlb import connect\n"
               "t = clientlb.HTTPTransport\n"
               "from clientlb._http.transport import HTTPTransport\n"
               "from clientlb._tcp import connect as c2\n"
               "print(t is HTTPTransport, connect is c2, 'httpx' in sys.modules)\n"
               "try:\n    clientlb.HTTPTransprt\nexcept AttributeError as e:\n    print(e)")
    assert out.splitlines() == [
        "True True True", "module 'clientlb' has no attribute 'HTTPTransprt'"]


def test_dir_and_all_list_every_public_name_lazy_ones_included() -> None:
    names = set(dir(clientlb))
    assert set(clientlb.__all__) <= names
    for name in clientlb.__all__:
        assert getattr(clientlb, name) is not None, name
