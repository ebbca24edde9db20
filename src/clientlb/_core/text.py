"""Small wording helpers shared by messages, log lines and the command line."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str) -> str:
    """``"1 endpoint"``, ``"0 endpoints"``, ``"3 endpoints"`` (English nouns taking an -s)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
