"""Circuit breaking: caps on concurrent requests, failing fast over the cap.

Envoy's circuit breakers (``arch_overview/upstream/circuit_breaking``,
``max_requests``) and Finagle's admission control have the same purpose:
when a backend — or the whole service — is so slow that requests pile up,
queueing more of them only adds latency and memory until the caller times
out anyway. Over the cap, ``pick()`` raises :class:`~clientlb.CircuitOpen`
at once, which the caller (or the HTTP/gRPC layer) turns into a fast error.

* ``max_requests`` — concurrent requests through the balancer (all
  endpoints). Over it every pick fails fast.
* ``max_requests_per_endpoint`` — concurrent requests on one endpoint. A
  pick that lands on a full endpoint goes to another one that is not full
  (a few more strategy draws, then the first one with room); only when all
  are full does it fail fast.

Both default to ``None`` (no cap). Envoy's default of 1024 per cluster is
a well-known source of surprise 503s ("upstream overflow") when traffic
grows, and inside one process the application already bounds its
concurrency (thread pool, semaphore); set a cap from your measured capacity.
The caps are approximate under races between threads (as Envoy's are):
they protect from pile-ups, not enforce an exact count.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping

from .._core.errors import CircuitOpen, ConfigError
from .._core.outcome import Outcome
from .._core.state import EndpointState
from .._strategies import Key, Picker
from .._strategies.base import redraw

__all__ = ["CircuitBreaker", "check_limit"]


def check_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be an integer >= 1 or None, got {value!r}", field=name)
    return value


class CircuitBreaker:
    """Admission control for one balancer; see the module documentation."""

    def __init__(self, service: str, max_requests: int | None,
                 max_requests_per_endpoint: int | None) -> None:
        self.service = service
        self.max_requests = max_requests
        self.max_per_endpoint = max_requests_per_endpoint
        # Lock-free in-flight count (only with max_requests): ``next()`` on an
        # itertools.count is atomic, so admissions and releases each get a
        # unique sequence number; in flight = admitted - released. A racing
        # store of ``_released_n`` can lag by a release or two, which errs on
        # the side of rejecting, and corrects itself at the next release.
        self._admit_seq = itertools.count(1)
        self._release_seq = itertools.count(1)
        self._released_n = 0
        self._admitted_n = 0
        self.rejected_balancer = 0
        self.rejected_endpoint = 0

    def admit(self, state: EndpointState, picker: Picker, key: Key | None, now: float,
              eligible: Mapping[str, float], states: Mapping[str, EndpointState],
              exclude: Collection[str] | None) -> EndpointState:
        """The state to use (maybe another one), or raise :class:`CircuitOpen`."""
        cap = self.max_per_endpoint
        if cap is not None and state.load.in_flight >= cap:
            state = self._another(state, picker, key, now, eligible, states, exclude, cap)
        limit = self.max_requests
        if limit is not None:
            admitted = next(self._admit_seq)
            self._admitted_n = admitted
            active = admitted - self._released_n  # including this one
            if active > limit:
                self._note_release()  # the rejected request is not in flight
                self.rejected_balancer += 1
                raise CircuitOpen(
                    f"{active - 1} requests in flight, max_requests={limit}",
                    service=self.service, scope="balancer", limit=limit)
        return state

    @property
    def active(self) -> int:
        """Requests admitted and not yet done (approximate under races)."""
        return self._admitted_n - self._released_n

    def _note_release(self) -> None:
        n = next(self._release_seq)
        if n > self._released_n:
            self._released_n = n

    def _another(self, state: EndpointState, picker: Picker, key: Key | None, now: float,
                 eligible: Mapping[str, float], states: Mapping[str, EndpointState],
                 exclude: Collection[str] | None, cap: int) -> EndpointState:
        def free(s: EndpointState) -> bool:
            return s.load.in_flight < cap and not (exclude and s.address in exclude)

        candidates = (s for a in eligible if (s := states.get(a)) is not None)
        other = redraw(picker, key, now, free, candidates)
        if other is not None:
            return other
        # every endpoint not yet tried is full: one already tried, if it has room
        for address in eligible:
            candidate = states.get(address)
            if candidate is not None and candidate.load.in_flight < cap:
                return candidate
        self.rejected_endpoint += 1
        raise CircuitOpen(
            f"every endpoint has {cap} requests in flight (max_requests_per_endpoint={cap})",
            service=self.service, scope="endpoint", limit=cap)

    def release(self, state: EndpointState, outcome: Outcome, latency: float,
                now: float) -> None:
        """Outcome listener: one admitted request ended."""
        self._note_release()
