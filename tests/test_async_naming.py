"""One naming rule for async twins, httpx's: the async twin of ``name`` is ``aname``
(``close``/``aclose``); old names stay as deprecated aliases (issue 14)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import clientlb

#: Async functions named after the standard library's, not after a sync twin of ours.
STDLIB_NAMES = {"open_connection"}  # asyncio.open_connection
#: Old names, kept as aliases that warn: old → new.
DEPRECATED = {"wait_ready_async": "await_ready"}


def _foreign(cls: type, name: str) -> bool:
    """``name`` is an interface's own (httpx.AsyncBaseTransport, asyncio.StreamWriter)."""
    return any(name in vars(base) for base in cls.__mro__[1:]
               if not base.__module__.startswith("clientlb"))


def _public_async_names() -> list[tuple[str, str, object]]:
    found: list[tuple[str, str, object]] = []
    for export in clientlb.__all__:
        obj = getattr(clientlb, export)
        if inspect.iscoroutinefunction(obj):
            found.append(("clientlb", export, clientlb))
        if isinstance(obj, type):
            for name, member in inspect.getmembers(obj):
                if not name.startswith("_") and inspect.iscoroutinefunction(member) \
                        and not _foreign(obj, name):
                    found.append((export, name, obj))
    return found


def test_every_public_async_function_is_a_plus_the_name_of_its_sync_twin() -> None:
    """``aclose`` next to ``close``, ``aconnect_with`` next to ``connect_with``: no
    ``_async`` suffix, no async name without its sync twin (the names of an interface a
    class implements, httpx's or asyncio's, and stdlib names aside)."""
    names = _public_async_names()
    assert ("LoadBalancer", "await_ready", clientlb.LoadBalancer) in names
    wrong = []
    for owner, name, where in names:
        if name in STDLIB_NAMES or name in DEPRECATED:
            continue
        if not (name.startswith("a") and callable(getattr(where, name[1:], None))):
            wrong.append(f"{owner}.{name}")
    assert wrong == []


def test_await_ready_is_the_async_twin_of_wait_ready() -> None:
    async def main() -> None:
        async with clientlb.LoadBalancer("static://127.0.0.1:1") as lb:
            assert await lb.await_ready(timeout=1)
            assert lb.wait_ready(timeout=1)

    asyncio.run(main())


def test_old_async_names_still_work_and_warn() -> None:
    """``wait_ready_async`` answers as before, with a DeprecationWarning naming the new one."""
    async def main() -> None:
        async with clientlb.LoadBalancer("static://127.0.0.1:1") as lb:
            with pytest.warns(DeprecationWarning, match=r"await_ready\(\)"):
                assert await lb.wait_ready_async(timeout=1)

    asyncio.run(main())


def test_registry_has_aclose_and_async_with() -> None:
    """``Registry`` closes its balancers from asyncio too, with ``aclose()`` or ``async with``."""
    async def main() -> None:
        async with clientlb.Registry() as registry:
            lb = registry.create("users", "static://127.0.0.1:1")
            other = registry.create("orders", "static://127.0.0.1:2")
        assert lb.closed and other.closed
        assert registry.names() == []
        registry = clientlb.Registry()
        lb = registry.create("users", "static://127.0.0.1:1")
        await registry.aclose()
        assert lb.closed

    asyncio.run(main())
