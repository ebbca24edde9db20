"""``with`` and ``async with`` for the objects that own background work.

A balancer or a registry starts discovery, probes and pools: ``with`` closes them
with ``close()``, ``async with`` with ``aclose()`` (which stops asyncio tasks on
their own loop). One mixin, so every such object behaves the same.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Closing"]

_T = TypeVar("_T", bound="Closing")


class Closing:
    """``with``/``async with`` support over ``close()``/``aclose()``."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
