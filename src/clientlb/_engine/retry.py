"""Retry policy and retry budget, shared by the HTTP and gRPC integrations.

Retries hide a failing endpoint from the caller — and, unbounded, turn a
partial outage into a retry storm that finishes the job. clientlb bounds them
twice:

* per call, by a :class:`RetryPolicy`: at most ``attempts`` attempts, with
  exponential backoff and "full jitter" between them (a random wait in
  ``[0, min(max_backoff, backoff × 2^(n-1))]``, the algorithm of AWS's
  "Exponential Backoff and Jitter" and of Envoy's retry back-off), the
  machinery being tenacity's stop and wait strategies;
* per balancer, by a :class:`RetryBudget`, the token budget of Finagle's
  ``RetryBudget`` and Linkerd's ``retryBudget``: within a sliding ``ttl``
  window, retries may add at most ``ratio`` (20%) of the original requests,
  plus a floor of ``min_retries_per_second`` (10/s) so that a client with
  little traffic can still retry. When the budget is spent, the failure goes
  to the caller instead of being retried.

Defaults (why):

* ``attempts = 3`` — the first try and two retries: enough to step over two
  dead endpoints, few enough to bound a call's latency (gRFC A6 caps at 5).
* ``backoff = 25 ms``, ``max_backoff = 250 ms`` — Envoy's retry back-off base
  and its default cap of 10 × base.
* ``retry_after_cap = 1 s`` — a ``Retry-After`` from the failing endpoint is
  honoured (the next attempt waits at least that long) up to this cap: the
  retry goes to *another* endpoint, so a long server-requested pause would
  only add latency to a call that another endpoint can serve.
* Budget ``ratio = 0.2``, ``min_retries_per_second = 10``, ``ttl = 10 s`` —
  Finagle's and Linkerd's defaults.

Each balancer keeps its own budget (``lb.retry_budget``), built from the
settings of ``policy.budget``: integrations call :meth:`RetryBudget.deposit`
once per original request and :meth:`RetryBudget.try_withdraw` before each
retry.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import tenacity
from tenacity.wait import wait_base

from .._core.checks import check_clock
from .._core.errors import ConfigError, strict_arguments

__all__ = ["DEFAULT_RETRY_POLICY", "IDEMPOTENT_METHODS", "RetryBudget", "RetryPolicy",
           "RetryState"]

Clock = Callable[[], float]

#: RFC 9110 §9.2.2: methods whose repetition has the same effect as one call.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

_SCALE = 1000  # token units per deposit (Finagle's ScaleFactor)
_SLOTS = 10  # the ttl window is counted in this many slices


@strict_arguments
class RetryBudget:
    """Caps retries at ``ratio`` × requests + ``min_retries_per_second`` over ``ttl``.

    ::

        budget = RetryBudget(ratio=0.2, min_retries_per_second=10, ttl=10)
        budget.deposit()            # once per original request
        if budget.try_withdraw():   # once before each retry
            retry()

    Tokens (Finagle's ``TokenRetryBudget``): a request deposits 1000, a retry
    withdraws ``1000 / ratio``; a reserve of ``min_retries_per_second × ttl``
    retries is always there; deposits and withdrawals older than ``ttl``
    expire (counted in 10 slices of ``ttl / 10``). Thread-safe.

    Args:
        ratio: retries allowed per original request, 0..10 (default 0.2).
        min_retries_per_second: the floor of retries, >= 0 (default 10).
        ttl: the window in seconds, 1..60 as in Finagle (default 10).
        clock: a monotonic clock (default: the balancer's clock, or
            ``time.monotonic`` for a budget used on its own).
    """

    __slots__ = ("_clock", "_deposit", "_lock", "_refused", "_reserve", "_retries", "_slot",
                 "_slots", "_width", "_withdrawal", "clock_given", "min_retries_per_second",
                 "ratio", "requests", "ttl")

    def __init__(self, ratio: float = 0.2, min_retries_per_second: float = 10.0,
                 ttl: float = 10.0, *, clock: Clock | None = None) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 10:
            raise ConfigError(f"ratio must be a number 0..10, got {ratio!r}",
                              field="retry.budget.ratio")
        if (isinstance(min_retries_per_second, bool)
                or not isinstance(min_retries_per_second, (int, float))
                or not 0 <= min_retries_per_second <= 1e9):
            raise ConfigError(f"min_retries_per_second must be a number 0..1e9, got "
                              f"{min_retries_per_second!r}",
                              field="retry.budget.min_retries_per_second")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= 60:
            raise ConfigError(f"ttl must be 1..60 seconds, got {ttl!r}", field="retry.budget.ttl")
        check_clock(clock, "retry.budget.clock")
        self.ratio = float(ratio)
        self.min_retries_per_second = float(min_retries_per_second)
        self.ttl = float(ttl)
        self.clock_given = clock is not None
        self._clock: Clock = clock or time.monotonic
        self._deposit = _SCALE if ratio > 0 else 0
        self._withdrawal = int(_SCALE / ratio) if ratio > 0 else 1
        self._reserve = int(self.min_retries_per_second * self.ttl * self._withdrawal)
        self._width = self.ttl / _SLOTS
        self._slots = [0] * _SLOTS
        self._slot = int(self._clock() / self._width)
        self._lock = threading.Lock()
        self.requests = 0
        self._retries = 0
        self._refused = 0

    def copy(self, *, clock: Clock | None = None) -> RetryBudget:
        """A fresh budget with the same settings (and ``clock`` unless one was given)."""
        return RetryBudget(self.ratio, self.min_retries_per_second, self.ttl,
                           clock=self._clock if self.clock_given else clock)

    def __eq__(self, other: object) -> bool:
        """Budgets are equal when their settings are (their counters are not compared)."""
        if not isinstance(other, RetryBudget):
            return NotImplemented
        return ((self.ratio, self.min_retries_per_second, self.ttl)
                == (other.ratio, other.min_retries_per_second, other.ttl))

    def __hash__(self) -> int:
        return hash((self.ratio, self.min_retries_per_second, self.ttl))

    def _advance(self, now: float) -> None:
        slot = int(now / self._width)
        gap = slot - self._slot
        if gap > 0:
            slots = self._slots
            if gap >= _SLOTS:
                slots[:] = [0] * _SLOTS
            else:
                for i in range(self._slot + 1, slot + 1):
                    slots[i % _SLOTS] = 0
            self._slot = slot

    def deposit(self) -> None:
        """Record one original request (each adds ``ratio`` of a retry)."""
        now = self._clock()
        with self._lock:
            self._advance(now)
            self._slots[self._slot % _SLOTS] += self._deposit
            self.requests += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        now = self._clock()
        with self._lock:
            self._advance(now)
            if self._reserve + sum(self._slots) < self._withdrawal:
                self._refused += 1
                return False
            self._slots[self._slot % _SLOTS] -= self._withdrawal
            self._retries += 1
            return True

    @property
    def balance(self) -> int:
        """How many retries the budget allows right now."""
        now = self._clock()
        with self._lock:
            self._advance(now)
            return max(0, (self._reserve + sum(self._slots)) // self._withdrawal)

    def statistics(self) -> dict[str, int]:
        """Counters since creation: requests, retries allowed, retries refused, balance."""
        return {"requests": self.requests, "retries": self._retries,
                "refused": self._refused, "balance": self.balance}

    def __repr__(self) -> str:
        return (f"<RetryBudget ratio={self.ratio:g} min_retries_per_second="
                f"{self.min_retries_per_second:g} ttl={self.ttl:g}s balance={self.balance} "
                f"retries={self._retries} refused={self._refused}>")


class _FullJitter(tenacity.wait_exponential):
    """tenacity's exponential window with an injectable rng: ``uniform(0, window)``."""

    def __init__(self, multiplier: float, maximum: float, rng: _random.Random) -> None:
        super().__init__(multiplier=multiplier, max=maximum)
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self._rng.uniform(0.0, super().__call__(retry_state))


def _check_seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}",
                          field=f"retry.{name}")
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        rule = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {rule}, got {value!r}",
                          field=f"retry.{name}")
    return float(value)


@strict_arguments
@dataclass(frozen=True)
class RetryPolicy:
    """How a balanced call is retried; ``LoadBalancer(retry=None)`` turns retries off.

    ::

        lb = clientlb.LoadBalancer(target, retry=clientlb.RetryPolicy(attempts=4))

    Args:
        attempts: attempts per call, the first one included (>= 1; default 3).
        backoff: the base of the exponential back-off in seconds (default
            25 ms), or any tenacity wait strategy (``tenacity.wait_fixed(0.1)``).
        max_backoff: the cap of one back-off wait (default 250 ms).
        budget: the per-balancer :class:`RetryBudget` settings (default
            20% + 10/s over 10 s); ``None`` means no budget (unbounded — use
            with care). Each balancer gets its own copy.
        retry_after_cap: the longest ``Retry-After`` honoured, in seconds
            (default 1 s).
        statuses: HTTP statuses retried for idempotent requests (default
            502, 503, 504).
        methods: the idempotent methods (default RFC 9110's).
        deadline: the total time of one logical call in seconds, every attempt
            and backoff included (default None: each attempt is bounded by the
            integration's own timeout only). A transport's or a call's own
            ``deadline=``/``timeout=`` takes precedence.

    Which failures are retried is decided by the integration: a request that
    never reached a backend (connection refused, connect timeout) always;
    one that may have reached it only when it is idempotent.
    """

    attempts: int = 3
    backoff: float | wait_base = 0.025
    max_backoff: float = 0.25
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    retry_after_cap: float = 1.0
    statuses: frozenset[int] = frozenset({502, 503, 504})
    methods: frozenset[str] = IDEMPOTENT_METHODS
    deadline: float | None = None

    def __post_init__(self) -> None:
        a = self.attempts
        if isinstance(a, bool) or not isinstance(a, int) or a < 1:
            raise ConfigError(f"attempts must be an integer >= 1, got {a!r}",
                              field="retry.attempts")
        if not isinstance(self.backoff, wait_base):
            _check_seconds("backoff", self.backoff)
        _check_seconds("max_backoff", self.max_backoff)
        _check_seconds("retry_after_cap", self.retry_after_cap)
        if self.deadline is not None:
            _check_seconds("deadline", self.deadline, allow_zero=False)
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ConfigError(f"budget must be a RetryBudget or None, got {self.budget!r}",
                              field="retry.budget")
        statuses = _frozen(self.statuses, int, "statuses")
        if any(not 100 <= s <= 599 for s in statuses):
            raise ConfigError(f"statuses must be HTTP statuses 100..599, got {sorted(statuses)}",
                              field="retry.statuses")
        methods = frozenset(m.upper() for m in _frozen(self.methods, str, "methods"))
        object.__setattr__(self, "statuses", statuses)
        object.__setattr__(self, "methods", methods)

    def new_budget(self, clock: Clock | None = None) -> RetryBudget | None:
        """A balancer's own budget with this policy's settings (None without a budget)."""
        return None if self.budget is None else self.budget.copy(clock=clock)

    def start(self, rng: _random.Random | None = None) -> RetryState:
        """The retry state of one call (create it lazily, at the first failure)."""
        backoff = self.backoff
        wait: wait_base = (backoff if isinstance(backoff, wait_base)
                           else _FullJitter(backoff, self.max_backoff, rng or _random.Random()))
        return RetryState(self, wait)


def _frozen(values: Iterable[Any], kind: type, name: str) -> frozenset[Any]:
    try:
        items = frozenset(values)
    except TypeError:
        raise ConfigError(f"{name} must be a collection, got {values!r}",
                          field=f"retry.{name}") from None
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, kind)]
    if bad:
        raise ConfigError(f"{name} must hold {kind.__name__} values, got {bad[0]!r}",
                          field=f"retry.{name}")
    return items


_RETRYING = tenacity.Retrying()  # only the owner object tenacity's RetryCallState requires


class RetryState:
    """The attempts of one call: tenacity's ``RetryCallState`` under the policy's strategies.

    After a failed attempt, :meth:`next_delay` says how long to wait before
    the next one, or ``None`` when the policy's attempts are spent. The
    budget is the caller's to check (it belongs to the balancer).
    """

    __slots__ = ("_call", "_policy", "_stop", "_wait")

    def __init__(self, policy: RetryPolicy, wait: wait_base) -> None:
        self._policy = policy
        self._wait = wait
        self._stop = tenacity.stop_after_attempt(policy.attempts)
        self._call = tenacity.RetryCallState(_RETRYING, None, (), {})

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None to stop.

        ``retry_after`` (a server's ``Retry-After``) is honoured up to the
        policy's ``retry_after_cap``: the wait is at least that long.
        """
        call = self._call
        call.set_result(None)
        if self._stop(call):
            return None
        delay = float(self._wait(call))
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, self._policy.retry_after_cap)
        call.prepare_for_next_attempt()
        return delay


DEFAULT_RETRY_POLICY = RetryPolicy()
