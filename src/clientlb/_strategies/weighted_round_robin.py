"""Weighted round robin from server-reported load (gRFC A58, ORCA).

Why: a client only sees its own calls. When backends differ in capacity, or
are also loaded by traffic other clients send, the backend itself knows best
how busy it is. With ORCA (gRFC A51) it says so on every response — its
utilization and the queries per second it serves — and each client turns
that into a weight: an estimate of the queries the backend serves per unit of
utilization, i.e. of its capacity.

The weight (gRFC A58, as grpc-go's ``balancer/weightedroundrobin`` and
Envoy's ``client_side_weighted_round_robin``)::

    utilization = application_utilization if > 0 else cpu_utilization
    weight = qps / (utilization + eps / qps × error_utilization_penalty)

with ``qps`` (``rps_fractional``) and ``eps`` as the backend reports them. A
report without utilization or qps carries no weight and is ignored.

Lifecycle of a weight (A58's ``non_empty_since`` and ``last_updated``):

* **blackout** — an endpoint's weight is used only once it has reported
  continuously for ``blackout_period`` (default 10 s): a new endpoint, one
  back in rotation (after a connection failure, an ejection, a drain) or one
  whose weight expired first shows it is steady;
* **expiration** — a weight not refreshed for ``weight_expiration_period``
  (default 180 s) is dropped, and the blackout applies again when reports
  come back;
* endpoints without a usable weight are picked **with the mean** of the known
  weights; with fewer than two known weights every endpoint gets the same
  weight (plain round robin, A58);
* weights are clamped to [1 %, 10×] of the mean, as gRPC's static-stride
  scheduler does, so that one wild report cannot starve or flood an endpoint.

Picking: the weights change with every report, but a picker is built only
when the endpoint set or its health changes, so the picker refreshes itself:
inside ``pick()``, at most once per ``weight_update_period`` (default 1 s; A58
raises values under 100 ms to 100 ms), on the balancer's clock passed to
``pick``. The refresh reads each endpoint's latest report, computes the
weights (O(n)) and swaps in a new scheduler with one reference assignment;
only one thread refreshes (a non-blocking lock: the others keep using the
current scheduler), so ``pick`` never blocks and costs O(log n) amortized.
The scheduler is the smooth earliest-deadline-first one of ``round_robin``
(A58 prescribes EDF): each endpoint is due at ``(k + φᵢ) / wᵢ``, taken from a
heap, so picks are interleaved in proportion to the weights.

Static weights (discovery's, ``set_weight``, slow start) multiply the reported
ones. A58 has none (its endpoints' weights come only from reports), but every
clientlb strategy honours them: a canary at weight 0.05 or a slow-start ramp
keep working, and without reports the strategy is a weighted round robin on
them.

Defaults (why): A58's and Envoy's — ``blackout_period = 10 s``,
``weight_expiration_period = 180 s``, ``weight_update_period = 1 s``,
``error_utilization_penalty = 1.0`` (an error rate of 10 % counts as 0.1 of
extra utilization).
"""

from __future__ import annotations

import itertools
import math
import random as _random
import threading
from collections.abc import Sequence
from typing import ClassVar

from .._core.errors import ConfigError
from .._core.state import EndpointState
from .._engine.orca import EndpointLoadReports, LoadReport, load_reports_of
from .base import Key, Picker, Strategy
from .round_robin import _EDFPicker, _RotationPicker

__all__ = ["WeightedRoundRobin"]

#: gRPC's static-stride scheduler bounds: weights within [MIN_RATIO, MAX_RATIO] × mean.
MAX_RATIO = 10.0
MIN_RATIO = 0.01
#: A58: a weight_update_period under 100 ms is raised to 100 ms.
MIN_UPDATE_PERIOD = 0.1

#: Sequence numbers of pickers, to notice an endpoint coming back into rotation.
_builds = itertools.count(1)


class _WRRPicker(Picker):
    """A scheduler over fixed endpoints whose weights it refreshes from their reports."""

    __slots__ = ("_index", "_lock", "_next_update", "_reported", "_rng", "_scheduler",
                 "_slots", "_states", "_static", "_strategy")

    def __init__(self, strategy: WeightedRoundRobin, states: Sequence[EndpointState],
                 weights: Sequence[float], slots: Sequence[EndpointLoadReports],
                 rng: _random.Random) -> None:
        self._strategy = strategy
        self._states = tuple(states)
        self._static = tuple(float(w) for w in weights)
        self._slots = tuple(slots)
        self._index = {id(s): i for i, s in enumerate(self._states)}
        self._rng = rng
        self._reported: tuple[float, ...] = (1.0,) * len(self._states)
        self._scheduler: Picker = _RotationPicker(self._states, 0)
        self._next_update = -math.inf  # the first pick computes the weights
        self._lock = threading.Lock()

    def pick(self, key: Key | None, now: float) -> EndpointState:
        if now >= self._next_update:
            self._refresh(now)
        return self._scheduler.pick(key, now)

    def weight_of(self, state: EndpointState, now: float) -> float | None:
        i = self._index.get(id(state))
        if i is None or self._states[i] is not state:
            return None
        if now >= self._next_update:
            self._refresh(now)
        return self._reported[i]

    def _refresh(self, now: float) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing: the current scheduler serves
        try:
            if now < self._next_update:
                return
            strategy = self._strategy
            reported = _spread([strategy.weight_at(slot, now) for slot in self._slots])
            used = [r * s for r, s in zip(reported, self._static, strict=True)]
            n = len(used)
            offset = self._rng.random()
            if all(w == used[0] for w in used):
                scheduler: Picker = _RotationPicker(self._states, int(offset * n))
            else:
                scheduler = _EDFPicker(self._states, used, offset)
            self._reported = tuple(reported)
            self._scheduler = scheduler
            self._next_update = now + strategy.weight_update_period
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        weights = ", ".join(f"{s.address}={w:.3g}" for s, w in zip(self._states,
                                                                   self._reported, strict=True))
        return f"<WeightedRoundRobin picker [{weights}]>"


def _spread(weights: Sequence[float]) -> list[float]:
    """The weights the scheduler uses: unknown (0) ones at the mean of the known,
    every one within [MIN_RATIO, MAX_RATIO] × that mean; all 1 with fewer than two known."""
    known = [w for w in weights if w > 0.0]
    if len(known) < 2:
        return [1.0] * len(weights)
    mean = sum(known) / len(known)
    low, high = mean * MIN_RATIO, mean * MAX_RATIO
    return [min(max(w, low), high) if w > 0.0 else mean for w in weights]


def _seconds(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0 or (positive and value == 0):
        rule = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} must be a finite number {rule}, got {value!r}", field=name)
    return float(value)


class WeightedRoundRobin(Strategy):
    """Round robin weighted by the load the backends report (gRFC A58, ORCA).

    Backends attach an ORCA report to their responses — the gRPC trailer
    ``endpoint-load-metrics-bin`` or the HTTP header ``endpoint-load-metrics``
    (see :mod:`clientlb.orca` for the server side) — and each endpoint's weight
    is ``qps / (utilization + eps / qps × error_utilization_penalty)``.

    Args:
        blackout_period: seconds an endpoint must report before its weight is
            used (default 10, gRFC A58's); 0 uses it at once.
        weight_expiration_period: seconds after which a weight that was not
            refreshed is dropped (default 180).
        weight_update_period: how often the picker recomputes the weights
            (default 1 s; under 0.1 s counts as 0.1 s).
        error_utilization_penalty: how much an error rate of 100 % adds to the
            utilization (default 1.0; 0 ignores errors).

    Raises:
        ConfigError: a value that is not a finite number in its range.
    """

    name: ClassVar[str] = "weighted_round_robin"
    uses_load_reports: ClassVar[bool] = True

    def __init__(self, *, blackout_period: float = 10.0, weight_expiration_period: float = 180.0,
                 weight_update_period: float = 1.0, error_utilization_penalty: float = 1.0
                 ) -> None:
        self.blackout_period = _seconds("blackout_period", blackout_period, positive=False)
        self.weight_expiration_period = _seconds(
            "weight_expiration_period", weight_expiration_period, positive=True)
        self.weight_update_period = max(
            MIN_UPDATE_PERIOD,
            _seconds("weight_update_period", weight_update_period, positive=True))
        self.error_utilization_penalty = _seconds(
            "error_utilization_penalty", error_utilization_penalty, positive=False)

    def weight(self, report: LoadReport) -> float:
        """The weight ``report`` gives its endpoint (0: it carries none)."""
        qps = report.rps_fractional
        utilization = report.load_utilization
        if utilization <= 0.0 or qps <= 0.0:
            return 0.0
        utilization += report.eps / qps * self.error_utilization_penalty
        return qps / utilization

    def weight_at(self, slot: EndpointLoadReports, now: float) -> float:
        """An endpoint's weight at ``now``: 0 while in blackout, after expiry, or
        before its first usable report (A58's ``GetWeight``)."""
        report = slot.weighted
        if report is None:
            return 0.0
        if now - slot.last_updated >= self.weight_expiration_period:
            slot.non_empty_since = None  # the blackout starts again with the next report
            return 0.0
        since = slot.non_empty_since
        if self.blackout_period > 0.0 and (since is None or now - since < self.blackout_period):
            return 0.0
        return self.weight(report)

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        slots = [load_reports_of(state) for state in endpoints]
        # An endpoint left out of a picker built since its own last one (transient
        # failure, ejection, drain) is back in rotation: its weight must be earned
        # again (A58 resets non_empty_since when a subchannel becomes READY).
        latest = max(slot.built for slot in slots)
        seq = next(_builds)
        for slot in slots:
            if slot.built < latest:
                slot.non_empty_since = None
            slot.built = seq
        return _WRRPicker(self, endpoints, weights, slots, rng)

    def __repr__(self) -> str:
        return (f"WeightedRoundRobin(blackout_period={self.blackout_period:g}, "
                f"weight_expiration_period={self.weight_expiration_period:g}, "
                f"weight_update_period={self.weight_update_period:g}, "
                f"error_utilization_penalty={self.error_utilization_penalty:g})")
