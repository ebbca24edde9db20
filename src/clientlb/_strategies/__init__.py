"""Load-balancing strategies, one module each; see :mod:`.base` for the contract."""

from __future__ import annotations

from .base import Key, Picker, Strategy
from .least_request import LeastRequest
from .maglev import Maglev
from .peak_ewma import PeakEwma
from .random import Random
from .ring_hash import RingHash
from .round_robin import RoundRobin
from .weighted_round_robin import WeightedRoundRobin

__all__ = [
    "STRATEGIES",
    "Key",
    "LeastRequest",
    "Maglev",
    "PeakEwma",
    "Picker",
    "Random",
    "RingHash",
    "RoundRobin",
    "Strategy",
    "WeightedRoundRobin",
    "resolve_strategy",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RoundRobin, Random, LeastRequest, PeakEwma, RingHash, Maglev,
                              WeightedRoundRobin)
}


def resolve_strategy(strategy: str | Strategy) -> Strategy:
    """A :class:`Strategy` from its name, or the object itself.

    Raises ConfigError listing the valid names for an unknown one.
    """
    from .._core.errors import ConfigError

    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        cls = STRATEGIES.get(strategy)
        if cls is not None:
            return cls()
        raise ConfigError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)} "
            "or pass a Strategy object",
            field="strategy",
        )
    raise ConfigError(
        f"strategy must be a name or a Strategy object, got {strategy!r}", field="strategy"
    )
