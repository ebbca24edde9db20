"""The strategy contract: a :class:`Strategy` builds a :class:`Picker` from a snapshot.

As in grpc-go's ``balancer`` package, a picker is immutable with respect to
the endpoint set: every change (discovery update, ejection, weight change)
builds a new picker and publishes it atomically; ``Picker.pick`` never blocks
and never does I/O. Load-aware pickers read live load metrics
(:class:`~clientlb._core.load.EndpointLoad`) through the endpoint states they hold.

Weights given to ``build`` are the *effective* weights (after slow start).
They are all > 0: the balancer removes zero-weight endpoints beforehand, and
uses them (with equal weights) only when every endpoint has weight 0.
"""

from __future__ import annotations

import random as _random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Union

import xxhash

from .._core.errors import strict_arguments
from .._core.load import EndpointLoad
from .._core.state import EndpointState

__all__ = ["AliasSampler", "Key", "Picker", "Strategy", "hash_key", "uniform_weights"]

Key = Union[str, bytes, int]  # noqa: UP007 - a runtime alias, valid on 3.10
Clock = Callable[[], float]


class Picker(ABC):
    """Chooses one endpoint state per call; built for one snapshot."""

    __slots__ = ()

    @abstractmethod
    def pick(self, key: Key | None, now: float) -> EndpointState:
        """Choose an endpoint. ``key`` drives hashing pickers; others ignore it."""

    def weight_of(self, state: EndpointState, now: float) -> float | None:
        """The weight this picker computed for ``state`` from its load reports, for
        ``snapshot()`` (None: the picker does not compute weights)."""
        return None


@strict_arguments
class Strategy(ABC):
    """A load-balancing algorithm: configuration plus a :meth:`build` method.

    Subclass it to plug in your own algorithm; ``name`` is what ``snapshot()``
    and ``repr`` show.
    """

    name: ClassVar[str] = "custom"
    #: True when the strategy uses the pick key (consistent hashing).
    uses_key: ClassVar[bool] = False
    #: True when the strategy reads the endpoints' ORCA load reports
    #: (``weighted_round_robin``): the integrations parse them only then.
    uses_load_reports: ClassVar[bool] = False
    #: True when the strategy reads :attr:`EndpointLoad.error_rate` (``peak_ewma``):
    #: the loads track it only then (it costs ~6% of a pick+done).
    weighs_errors: ClassVar[bool] = False

    def __init__(self) -> None:  # noqa: B027 - not abstract: most strategies have no settings
        """A strategy without settings takes no argument."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # an unknown keyword is a ConfigError, for every strategy (the public contract)
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            strict_arguments(cls)

    @abstractmethod
    def build(
        self, endpoints: Sequence[EndpointState], weights: Sequence[float], rng: _random.Random
    ) -> Picker:
        """A picker over ``endpoints`` (non-empty) with positive ``weights``."""

    def new_load(self, now: float) -> EndpointLoad:
        """The load metric object for a new endpoint (override to tune it)."""
        return EndpointLoad(now, track_errors=self.weighs_errors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))


def uniform_weights(weights: Sequence[float]) -> bool:
    first = weights[0]
    return all(w == first for w in weights)


class AliasSampler:
    """O(1) weighted sampling (Vose's alias method), built in O(n)."""

    __slots__ = ("_alias", "_n", "_prob", "_random")

    def __init__(self, weights: Sequence[float], rng: _random.Random) -> None:
        n = len(weights)
        total = float(sum(weights))
        scaled = [w * n / total for w in weights]
        prob = [1.0] * n
        alias = list(range(n))
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s] = scaled[s]
            alias[s] = g
            scaled[g] = scaled[g] + scaled[s] - 1.0
            (small if scaled[g] < 1.0 else large).append(g)
        self._prob = prob
        self._alias = alias
        self._n = n
        self._random = rng.random

    def sample(self) -> int:
        u = self._random() * self._n
        i = int(u)
        return i if u - i < self._prob[i] else self._alias[i]


_xxh64 = xxhash.xxh64_intdigest


def hash_key(key: Key) -> int:
    """A stable 64-bit hash (xxHash64, as Envoy) of a pick key; same in every process."""
    if isinstance(key, str):
        return _xxh64(key.encode())
    if isinstance(key, bytes):
        return _xxh64(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return _xxh64((key & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))
    raise TypeError(f"pick key must be str, bytes or int, got {type(key).__name__}")


#: Extra draws before a scan when the first pick is unusable (already tried, or
#: full): each draw follows the strategy's own weights, so the endpoint found is
#: the one the strategy would most likely have chosen next; three draws miss every
#: usable endpoint only when they hold a small share of the weight, and then the
#: scan (retry and overflow paths only, so O(n) is fine) finds one.
REDRAWS = 3


def redraw(picker: Picker, key: Key | None, now: float, usable: Callable[[EndpointState], bool],
           candidates: Iterable[EndpointState]) -> EndpointState | None:
    """Another endpoint than the one first picked: ``REDRAWS`` draws from the picker,
    then the first usable of ``candidates``; None when none is usable."""
    for _ in range(REDRAWS):
        state = picker.pick(key, now)
        if usable(state):
            return state
    for state in candidates:
        if usable(state):
            return state
    return None
