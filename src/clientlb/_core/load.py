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
"""

from __future__ import annotations

import math
import threading

__all__ = ["DEFAULT_DECAY", "DEFAULT_RTT", "EndpointLoad"]

DEFAULT_DECAY = 10.0
DEFAULT_RTT = 0.030


class EndpointLoad:
    """In-flight count and peak-EWMA latency of one endpoint (thread-safe)."""

    __slots__ = ("_lock", "decay", "ewma", "failures", "in_flight", "requests", "stamp")

    def __init__(self, now: float, *, decay: float = DEFAULT_DECAY,
                 default_rtt: float = DEFAULT_RTT) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.ewma = default_rtt
        self.stamp = now
        self.decay = decay

    def release(self, now: float, latency: float | None, failed: bool = False) -> None:
        """End one call; ``latency=None`` (a cancelled call) leaves the estimate alone."""
        with self._lock:
            self.in_flight -= 1
            self.requests += 1
            if failed:
                self.failures += 1
            if latency is None:
                return
            elapsed = now - self.stamp
            w = math.exp(-elapsed / self.decay) if elapsed > 0 else 1.0
            decayed = self.ewma * w
            if failed and latency < decayed:
                latency = decayed
            if latency > decayed:
                self.ewma = latency  # peak: jump up at once
            else:
                self.ewma = decayed + latency * (1.0 - w)
            self.stamp = now

    def outlasted(self, now: float, elapsed: float) -> None:
        """A call was still unanswered after ``elapsed`` seconds when it was given up:
        the estimate rises to at least ``elapsed`` (nothing else changes)."""
        with self._lock:
            if elapsed > self.latency(now):
                self.ewma = elapsed
                self.stamp = now

    def latency(self, now: float) -> float:
        """The peak-EWMA latency estimate, decayed to ``now``."""
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.ewma
        return self.ewma * math.exp(-elapsed / self.decay)

    def peak_ewma_cost(self, now: float) -> float:
        return self.latency(now) * (self.in_flight + 1)
