"""Outlier detection: passive health checking from the outcomes of real traffic.

Implements Envoy's outlier detection (``arch_overview/upstream/outlier``,
``config.cluster.v3.OutlierDetection``) and gRFC A50 (xDS outlier detection in
gRPC):

* **Consecutive detectors** run inline on every outcome: ``consecutive_failures``
  (Envoy's ``consecutive_5xx``: any failure kind), ``consecutive_gateway_failures``
  (502/503/504, connect failures, timeouts) and, with
  ``split_local_origin_errors``, ``consecutive_local_origin_failures``
  (connect failures only, counted apart from what the backend answered: with
  the split, a backend that accepts the connection and answers 500 never
  resets nor feeds the local-origin counter, and a refused connection never
  counts as a "5xx").
* **Statistical detectors** (success rate, failure percentage) run at each
  ``interval`` sweep over the counts of the interval that just ended.
* **Ejection**: for ``base_ejection_time × multiplier`` capped by
  ``max_ejection_time``; the multiplier grows per ejection and decays by one
  per sweep interval spent un-ejected (A50). ``max_ejection_percent`` is
  checked *after* the ejection (Envoy #27066) with at least one ejection
  allowed (``always_eject_one``; gRPC and historical Envoy, #3263/#26877) and
  never the last serving endpoint.

No background thread is needed: the sweep runs lazily when an outcome or a
pick sees ``now >= next_sweep`` (the balancer's injectable clock), and an
ejection that expires ends at its deadline through the pick-time deadline
check of :class:`~clientlb._health.manager.HealthManager`, traffic or not.
"""

from __future__ import annotations

import math
import random as _random
import statistics
from collections.abc import Callable, Sequence

from .._core.outcome import Outcome
from .._core.state import EndpointState
from .config import OutlierDetection

__all__ = ["OutlierDetector", "OutlierStats"]

_SUCCESS = Outcome.SUCCESS
_CANCELLED = Outcome.CANCELLED
_CONNECT = Outcome.CONNECT_FAILURE
_GATEWAY = frozenset({Outcome.GATEWAY_FAILURE, Outcome.CONNECT_FAILURE, Outcome.TIMEOUT})

#: eject(state, detector, detail, now) -> bool (False when the cap refused it)
Ejector = Callable[[EndpointState, str, str, float], bool]


class OutlierStats:
    """Per-endpoint counters of the outlier detector (``EndpointState.outlier``).

    Increments are plain attribute updates under the GIL: a lost increment
    in a race only shifts a statistic by one, like Envoy's relaxed counters;
    ejection decisions themselves are taken under the balancer lock.
    """

    __slots__ = (
        "consecutive",
        "consecutive_gateway",
        "consecutive_local",
        "failures",
        "local_failures",
        "local_successes",
        "successes",
    )

    def __init__(self) -> None:
        self.consecutive = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        # interval buckets (external = the backend's answers; local = connects)
        self.successes = 0
        self.failures = 0
        self.local_successes = 0
        self.local_failures = 0

    def reset_consecutive(self) -> None:
        self.consecutive = self.consecutive_gateway = self.consecutive_local = 0

    def reset_interval(self) -> None:
        self.successes = self.failures = self.local_successes = self.local_failures = 0


class OutlierDetector:
    """The detectors over one balancer's endpoints; see the module documentation.

    ``record`` is the per-outcome path (a handful of attribute updates, no
    lock, no allocation); it returns the name of a consecutive detector whose
    threshold was just reached, and the caller (the health manager) ejects
    under its lock. ``sweep`` runs the interval work.
    """

    def __init__(self, config: OutlierDetection, rng: _random.Random) -> None:
        self.config = config
        self._rng = rng
        self._split = config.split_local_origin_errors
        self._cf = config.consecutive_failures or 0
        self._cg = config.consecutive_gateway_failures or 0
        self._cl = (config.consecutive_local_origin_failures or 0) if self._split else 0

    # -- per outcome --------------------------------------------------------------------

    def record(self, stats: OutlierStats, outcome: Outcome) -> str | None:
        """Count one outcome; the consecutive detector that fired, if any."""
        if outcome is _SUCCESS:
            stats.successes += 1
            stats.consecutive = 0
            stats.consecutive_gateway = 0
            if self._split:
                stats.local_successes += 1
                stats.consecutive_local = 0
            return None
        if outcome is _CANCELLED:
            return None
        if self._split:
            if outcome is _CONNECT:
                stats.local_failures += 1
                stats.consecutive_local += 1
                if self._cl and stats.consecutive_local >= self._cl:
                    return "consecutive_local_origin_failures"
                return None
            # the connection was made: a local-origin success, an external failure
            stats.local_successes += 1
            stats.consecutive_local = 0
        stats.failures += 1
        stats.consecutive += 1
        if outcome in _GATEWAY:
            stats.consecutive_gateway += 1
        else:
            stats.consecutive_gateway = 0
        if self._cf and stats.consecutive >= self._cf:
            return "consecutive_failures"
        if self._cg and stats.consecutive_gateway >= self._cg:
            return "consecutive_gateway_failures"
        return None

    def enforced(self, detector: str) -> bool:
        """Roll the ``enforcing_*`` percentage of a detector."""
        cfg = self.config
        pct = {
            "consecutive_failures": cfg.enforcing_consecutive_failures,
            "consecutive_gateway_failures": cfg.enforcing_consecutive_gateway_failures,
            "consecutive_local_origin_failures": cfg.enforcing_consecutive_local_origin_failures,
            "success_rate": cfg.success_rate.enforcing if cfg.success_rate else 0.0,
            "failure_percentage": (cfg.failure_percentage.enforcing
                                   if cfg.failure_percentage else 0.0),
        }[detector]
        return pct >= 100.0 or (pct > 0 and self._rng.random() * 100.0 < pct)

    def may_eject(self, ejected: int, total: int) -> bool:
        """Whether one more ejection keeps within ``max_ejection_percent``.

        ``ejected`` endpoints are ejected now out of ``total`` (non-draining).
        The percentage is counted after the ejection (Envoy #27066); one
        ejection is always allowed with ``always_eject_one`` (gRPC, Envoy before
        #27909); the last serving endpoint is never ejected.
        """
        if ejected + 1 >= total:
            return False
        if 100.0 * (ejected + 1) / total <= self.config.max_ejection_percent:
            return True
        return self.config.always_eject_one and ejected == 0

    # -- per interval -------------------------------------------------------------------

    def sweep(self, states: Sequence[EndpointState], now: float, intervals: int,
              eject: Ejector) -> None:
        """The interval work: multiplier decay, statistical detectors, bucket reset.

        ``intervals`` is how many whole intervals elapsed since the previous
        sweep (more than one when no traffic or pick ran the sweep on time).
        """
        for s in states:
            # A50: an ejected endpoint (even one whose time is up but that this
            # sweep returns) keeps its multiplier; an un-ejected one is forgiven
            # one step per interval.
            if s.ejected_until is None and s.ejection_multiplier > 0:
                s.ejection_multiplier = max(0, s.ejection_multiplier - intervals)
        cfg = self.config
        if cfg.success_rate is not None:
            self._success_rate(states, now, eject, local=False)
            if self._split:
                self._success_rate(states, now, eject, local=True)
        if cfg.failure_percentage is not None:
            self._failure_percentage(states, now, eject, local=False)
            if self._split:
                self._failure_percentage(states, now, eject, local=True)
        for s in states:
            if s.outlier is not None:
                s.outlier.reset_interval()

    @staticmethod
    def _volume(s: EndpointState, local: bool) -> tuple[int, int]:
        st: OutlierStats = s.outlier
        if local:
            return st.local_successes, st.local_failures
        return st.successes, st.failures

    def _candidates(self, states: Sequence[EndpointState], now: float, volume: int,
                    local: bool) -> list[tuple[EndpointState, float]]:
        """(state, success rate) of non-ejected endpoints with enough requests."""
        out = []
        for s in states:
            if s.outlier is None or s.draining:
                continue
            if s.ejected_until is not None and now < s.ejected_until:
                continue
            ok, bad = self._volume(s, local)
            if ok + bad >= volume:
                out.append((s, ok / (ok + bad)))
        return out

    def _success_rate(self, states: Sequence[EndpointState], now: float, eject: Ejector,
                      local: bool) -> None:
        sr = self.config.success_rate
        assert sr is not None
        cands = self._candidates(states, now, sr.request_volume, local)
        if len(cands) < sr.minimum_hosts:
            return
        rates = [r for _, r in cands]
        mean = statistics.fmean(rates)
        stdev = statistics.pstdev(rates, mean)
        threshold = mean - sr.stdev_factor * stdev
        gap = sr.minimum_gap / 100.0
        for s, rate in cands:
            if rate < threshold and not math.isclose(rate, threshold) \
                    and mean - rate >= gap and self.enforced("success_rate"):
                eject(s, "success_rate",
                      f"success rate {rate:.1%} < {threshold:.1%} (mean {mean:.1%} − "
                      f"{sr.stdev_factor:g} × stdev {stdev:.1%}, and ≥ {sr.minimum_gap:g} "
                      "points below the mean)"
                      + (" [local origin]" if local else ""), now)

    def _failure_percentage(self, states: Sequence[EndpointState], now: float,
                            eject: Ejector, local: bool) -> None:
        fp = self.config.failure_percentage
        assert fp is not None
        cands = self._candidates(states, now, fp.request_volume, local)
        if len(cands) < fp.minimum_hosts:
            return
        for s, rate in cands:
            failed = 100.0 * (1.0 - rate)
            if failed > fp.threshold and self.enforced("failure_percentage"):
                eject(s, "failure_percentage",
                      f"{failed:.1f}% of requests failed > {fp.threshold:g}%"
                      + (" [local origin]" if local else ""), now)
