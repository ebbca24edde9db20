"""Load metrics: what the load-aware strategies compare.

The metric is kept apart from the algorithm that uses it (as tower's
``Load``): ``least_request`` compares :attr:`EndpointLoad.in_flight`,
``peak_ewma`` compares :meth:`EndpointLoad.peak_ewma_cost`. Both are fed by
the same in-flight increment (in ``LoadBalancer.pick``) and ``release`` (in
``Pick.done``) that every :class:`~clientlb.Pick` goes through.

Peak EWMA follows Finagle's ``PeakEwma`` (and Linkerd/tower, which ported it):
the latency estimate jumps *up* to any slower observation at once ("peak"),
and decays toward faster ones with a weight ``exp(-elapsed / decay)``. Reading
the estimate also decays it toward zero, so an endpoint that was slow and has
received no traffic since is eventually tried again. Cost is
``estimate × (pending + 1)``.

Defaults (why):

* ``decay = 10 s`` — Finagle's ``decayTime`` default; long enough to remember a
  slow endpoint across bursts, short enough to forgive it within seconds.
* ``default_rtt = 30 ms`` — Linkerd's default RTT estimate for an endpoint
  never measured: new endpoints look like an average LAN service, neither
  shunned nor swamped.
* A failed call is recorded as ``max(latency, current estimate)``: an endpoint
  that fails *fast* must not look fast (the "black hole" that lures a
  latency-based balancer); ejecting it is outlier detection's job.
* A call given up because a hedge answered first (``_engine/hedging.py``) is a
  *censored* observation: its true latency is at least the time it had been
  waiting. :meth:`EndpointLoad.outlasted` raises the estimate to that, never
  lowers it — the peak half of the rule, without guessing the rest.

**Error rate** (:attr:`EndpointLoad.error_rate`): the share of failed calls
over half the ``decay`` window (5 s by default) — outcome counts decayed by
``exp(-elapsed / (decay / 2))``, the square of the latency's weight, so that a
backend that starts failing is judged on the last few seconds, not on the
healthy minutes before — shrunk towards zero by
:data:`ERROR_PRIOR` pseudo-successes, so that one failure among the first
few calls says little (``1 / (1 + 10)``) while 30 failures in 100 calls say
0.27. ``peak_ewma`` multiplies its cost by ``1 + error_penalty × error_rate²``
(see :mod:`clientlb._strategies.peak_ewma` for the shape and the default): a
*gray* failure — a backend answering 503 to a third of its requests as fast
as the others answer 200 — otherwise keeps its full share, since retries
hide it from callers and no ejection threshold fires. Only the loads of a
strategy that reads it (``Strategy.weighs_errors``) track it: for the others it
would cost about 6% of every pick+done for nothing (``track_errors``, switched
by ``LoadBalancer.set_strategy``).
"""

from __future__ import annotations

import math
import threading

__all__ = ["DEFAULT_DECAY", "DEFAULT_RTT", "ERROR_PRIOR", "EndpointLoad"]

DEFAULT_DECAY = 10.0
DEFAULT_RTT = 0.030
#: Pseudo-successes added to the outcomes counted for the error rate: a rate over
#: a handful of calls is noise (one failure out of one call reads as 0.09, not 1).
ERROR_PRIOR = 10.0


class EndpointLoad:
    """In-flight count and peak-EWMA latency of one endpoint (thread-safe)."""

    __slots__ = ("_failed", "_lock", "_outcomes", "decay", "error_rate", "ewma", "failures",
                 "in_flight", "requests", "stamp", "track_errors")

    def __init__(self, now: float, *, decay: float = DEFAULT_DECAY,
                 default_rtt: float = DEFAULT_RTT, track_errors: bool = False) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.ewma = default_rtt
        self.stamp = now
        self.decay = decay
        #: failed / (outcomes + ERROR_PRIOR) over the decay window (see the module doc);
        #: stays 0 unless ``track_errors``
        self.error_rate = 0.0
        self.track_errors = track_errors
        self._outcomes = 0.0  # outcome and failure counts, decayed with the latency
        self._failed = 0.0

    def release(self, now: float, latency: float | None, failed: bool = False) -> None:
        """End one call; ``latency=None`` (a cancelled call) leaves the estimates alone."""
        with self._lock:
            self.in_flight -= 1
            self.requests += 1
            if failed:
                self.failures += 1
            if latency is None:
                return
            elapsed = now - self.stamp
            w = math.exp(-elapsed / self.decay) if elapsed > 0 else 1.0
            if self.track_errors:
                we = w * w  # = exp(-elapsed / (decay / 2)): errors judged on a shorter window
                outcomes = self._outcomes * we + 1.0
                bad = self._failed * we + (1.0 if failed else 0.0)
                self._outcomes = outcomes
                self._failed = bad
                self.error_rate = bad / (outcomes + ERROR_PRIOR)
            decayed = self.ewma * w
            if failed and latency < decayed:
                latency = decayed
            if latency > decayed:
                self.ewma = latency  # peak: jump up at once
            else:
                self.ewma = decayed + latency * (1.0 - w)
            self.stamp = now

    def track(self, on: bool) -> None:
        """Start (from zero: counts kept while untracked would be stale) or stop tracking
        the error rate; ``LoadBalancer.set_strategy`` calls it when the strategy changes."""
        with self._lock:
            if on and not self.track_errors:
                self._outcomes = self._failed = self.error_rate = 0.0
            self.track_errors = on

    def outlasted(self, now: float, elapsed: float) -> None:
        """A call was still unanswered after ``elapsed`` seconds when it was given up:
        the estimate rises to at least ``elapsed`` (nothing else changes)."""
        with self._lock:
            if elapsed <= self.latency(now):
                return
            since = now - self.stamp
            if since > 0:  # the error rate's counts share the stamp: decay them to now too
                we = math.exp(-2.0 * since / self.decay)
                self._outcomes *= we
                self._failed *= we
                self.stamp = now
            self.ewma = elapsed

    def latency(self, now: float) -> float:
        """The peak-EWMA latency estimate, decayed to ``now``."""
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.ewma
        return self.ewma * math.exp(-elapsed / self.decay)

    def peak_ewma_cost(self, now: float) -> float:
        return self.latency(now) * (self.in_flight + 1)
