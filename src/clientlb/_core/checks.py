"""Argument checks shared by the constructors: each raises ConfigError naming the rule.

The value checks specific to one class live with it (``port must be
1..65535``); the few that every layer needs — an injectable clock, a switch,
a mapping of strings — are here, so that ``clock=65536`` or ``env="A"`` is the
same clear :class:`~clientlb.ConfigError` from the balancer, a resolver or a
budget, never a ``TypeError`` at the first tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["check_bool", "check_clock", "check_str_mapping"]


def check_clock(clock: object, field: str = "clock") -> None:
    """``clock`` must be None or a callable returning a finite number of seconds.

    The clock is called once here: a clock that cannot tell the time fails at
    construction, not inside a pick.
    """
    if clock is None:
        return
    if not callable(clock):
        raise ConfigError(f"must be a callable returning seconds, got {clock!r}", field=field)
    try:
        now = clock()
    except Exception as exc:
        raise ConfigError(f"must be a callable returning seconds; calling {clock!r} raised "
                          f"{type(exc).__name__}: {exc}", field=field) from None
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ConfigError(f"must return a finite number of seconds, got {now!r} from "
                          f"{clock!r}", field=field)


def check_bool(value: object, field: str) -> bool:
    """A switch: ``True`` or ``False`` only (``"false"`` is not false)."""
    if not isinstance(value, bool):
        raise ConfigError(f"must be True or False, got {value!r}", field=field)
    return value


def check_str_mapping(value: object, field: str, *, secret: bool = False) -> None:
    """None or a mapping of strings to strings (an environment).

    With ``secret``, a bad value is described by its type only: an environment
    holds tokens.
    """
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a mapping of strings (like os.environ), got "
                          f"{type(value).__name__}", field=field)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            shown: Any = type(item).__name__ if secret else repr(item)
            raise ConfigError(f"must map strings to strings, got {key!r}: {shown}",
                              field=field)
