"""The machinery every network resolver shares: one async loop, run anywhere.

Each resolver is written once, as an ``async`` loop (:meth:`LoopResolver.run`).
The balancer decides where it runs:

* ``start(sink)`` (a balancer built outside an event loop) runs it as a task on
  one event loop shared by all such resolvers, in the daemon thread
  ``clientlb-discovery`` (one thread however many balancers);
* ``astart(sink)`` (a balancer built inside a running loop) runs it as a task
  on that loop, so dnspython's and httpx's async clients share the
  application's loop.

Either way discovery I/O never runs on the caller of ``pick()``: the loop
publishes immutable :class:`~clientlb.EndpointSet` snapshots and ``pick()``
only reads the picker built from the last one.

Shared rules (docs/architecture.md, "Layers and their contracts"):

* :meth:`LoopResolver.publish` is the only way a set reaches the balancer. It
  de-duplicates by address and skips a set equal to the last one published.
* :meth:`LoopResolver.fail` reports an error (a :class:`~clientlb.DiscoveryError`
  without secrets) and never publishes, so the last good set stays.
* :meth:`LoopResolver.malformed` skips a bad record with one warning per
  record (then debug lines) and counts it in :meth:`LoopResolver.statistics`.
* :meth:`LoopResolver.answer` publishes what one answer gave, except when
  the answer had records and *every one* was malformed (SRV records that all
  have port 0, Consul entries with no address): that is bad data, not an
  authoritative "no such service", so the last good set stays, the answer is
  counted in ``malformed_answers`` and reported as an error (a warning once
  per episode, like any discovery error).
* :meth:`LoopResolver.refresh` wakes the loop early, at most once per
  ``min_refresh_interval`` (default 1 s), so a storm of failing requests
  cannot turn into a storm of queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import threading
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .._core.checks import check_clock
from .._core.endpoint import Endpoint, EndpointSet
from .._core.errors import ConfigError, DiscoveryError
from .._core.target import Target
from .._core.text import plural
from ._backoff import Backoff, BackoffPolicy, check_seconds
from .base import Resolver, ResolverSink

T = TypeVar("T")

__all__ = ["LoopResolver", "ResolverStats"]

logger = logging.getLogger("clientlb.discovery")

Clock = Callable[[], float]
_MAX_REMEMBERED_MALFORMED = 1024


@dataclass(frozen=True)
class ResolverStats:
    """Counters of one resolver (``resolver.statistics()``); never holds a secret.

    Attributes:
        resolutions: successful answers (published or unchanged).
        updates: sets published (a changed set, or the first one).
        errors: failed attempts (timeouts, refused connections, bad answers).
        consecutive_errors: failures since the last success.
        malformed: records skipped because they were malformed.
        malformed_answers: answers ignored because every record in them was
            malformed (the last good set stayed).
        refreshes: early refreshes requested with ``refresh()``.
        endpoints: size of the last published set.
        last_error: text of the last error (secret-free), or None.
        last_success: the resolver clock's reading at the last success, or None.
    """

    resolutions: int
    updates: int
    errors: int
    consecutive_errors: int
    malformed: int
    refreshes: int
    endpoints: int
    last_error: str | None
    last_success: float | None
    malformed_answers: int = 0


_COUNTERS = ("resolutions", "updates", "errors", "consecutive_errors", "malformed",
             "malformed_answers", "refreshes")


_shared_lock = threading.Lock()
_shared: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None


def _shared_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """The event loop (in the daemon thread ``clientlb-discovery``) that runs the resolvers
    of every balancer built outside asyncio: one thread, however many balancers. A new
    one is started when needed, e.g. in a child process after ``fork()``."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared[1].is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="clientlb-discovery",
                                      daemon=True)
            thread.start()
            _shared = (loop, thread)
        return _shared


class LoopResolver(Resolver):
    """Base class of the resolvers that run an async discovery loop.

    Args (common resolver options, passed through ``resolver_options=``):
        rng: ``random.Random`` for jitter (default: a fresh one).
        clock: monotonic clock in seconds for rate limits and statistics
            (default ``time.monotonic``).
        backoff_initial, backoff_multiplier, backoff_maximum, backoff_jitter:
            the error backoff (see ``_backoff.BackoffPolicy``).
        min_refresh_interval: the shortest time between two resolutions
            triggered by ``refresh()`` (default 1 s).
    """

    scheme = "loop"

    def __init__(
        self,
        target: Target,
        *,
        rng: _random.Random | None = None,
        clock: Clock | None = None,
        backoff_initial: float = 1.0,
        backoff_multiplier: float = 1.6,
        backoff_maximum: float = 30.0,
        backoff_jitter: float = 0.2,
        min_refresh_interval: float = 1.0,
    ) -> None:
        super().__init__(target)
        if rng is not None and not isinstance(rng, _random.Random):
            raise ConfigError(f"must be a random.Random, got {rng!r}", field="rng")
        check_clock(clock)
        self._rng = rng or _random.Random()
        self._clock: Clock = clock or time.monotonic
        self._backoff = Backoff(
            BackoffPolicy(backoff_initial, backoff_multiplier, backoff_maximum, backoff_jitter),
            self._rng,
        )
        self._min_refresh_interval = check_seconds("min_refresh_interval", min_refresh_interval)
        self._lock = threading.Lock()
        self._closed = False
        self._started = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = threading.Event()  # the task has ended (or will never start)
        self._wake: asyncio.Event | None = None
        self._refresh_pending = False
        self._last_attempt: float | None = None
        self._last: EndpointSet | None = None
        self._version = 0
        self._malformed_seen: set[str] = set()
        # the counters of ResolverStats, by field name (statistics() copies them)
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._last_error: str | None = None
        self._last_success: float | None = None

    # -- the loop each resolver implements --------------------------------------------------

    @abstractmethod
    async def run(self, sink: ResolverSink) -> None:
        """Resolve until cancelled. Must handle its own errors with :meth:`fail`."""

    # -- where it runs ----------------------------------------------------------------------

    def start(self, sink: ResolverSink) -> None:
        loop, thread = _shared_loop()
        with self._lock:
            if self._closed or self._started:
                return
            self._started = True
            self._loop, self._thread = loop, thread
        loop.call_soon_threadsafe(self._spawn, sink)

    async def astart(self, sink: ResolverSink) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed or self._started:
                return
            self._started = True
            self._loop = loop
        self._spawn(sink)

    def _spawn(self, sink: ResolverSink) -> None:
        """Create the resolver task (runs on the resolver's loop)."""
        if self._closed:
            self._done.set()
            return
        assert self._loop is not None
        task = self._loop.create_task(self._guarded(sink),
                                      name=f"clientlb-{self.scheme}-resolver")
        task.add_done_callback(lambda _: self._done.set())
        self._task = task

    def _cancel(self) -> None:
        """Cancel the resolver task (runs on the resolver's loop)."""
        if self._task is not None:
            self._task.cancel()
        else:
            self._done.set()

    async def _guarded(self, sink: ResolverSink) -> None:
        self._wake = asyncio.Event()
        if self._refresh_pending:
            self._wake.set()
        while True:
            try:
                await self.run(sink)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stop discovery for good
                logger.exception("%s: resolver loop crashed; restarting", self)
                self.fail(sink, DiscoveryError(f"resolver crashed: {type(exc).__name__}",
                                               target=str(self.target)))
                await self.sleep(self.next_backoff())

    def close(self) -> None:
        """Stop resolving. From a thread, waits (up to 5 s) until the task has ended."""
        self._stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._done.wait(5)

    def stop(self) -> None:
        """Stop resolving without waiting (the task is cancelled on its loop)."""
        self._stop()

    async def aclose(self) -> None:
        self._stop()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
                await asyncio.to_thread(self._done.wait, 5)
            return
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop() \
                and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)

    def _stop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._cancel)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- waiting and refresh ----------------------------------------------------------------

    async def until_woken(self, work: Awaitable[T], timeout: float | None = None
                          ) -> asyncio.Future[T] | None:
        """Await ``work`` unless :meth:`refresh` wakes the loop first (or ``timeout``
        passes): the finished future, or None — then ``work`` was cancelled. Long
        waits (Consul's blocking queries, etcd's watch) go through it."""
        wake = self._wake
        assert wake is not None
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(wake.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        return task if task in done else None

    def refresh(self) -> None:
        """Re-resolve soon (rate-limited by ``min_refresh_interval``); thread-safe."""
        with self._lock:
            if self._closed:
                return
            self._refresh_pending = True
            self._counts["refreshes"] += 1
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    async def sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds or until :meth:`refresh`; True when woken by a refresh.

        A refresh is honoured once ``min_refresh_interval`` has passed since
        the last attempt (see :meth:`mark_attempt`).
        """
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, delay)
        while True:
            remaining = deadline - loop.time()
            if self._refresh_pending:
                wake.clear()
                since = (self._clock() - self._last_attempt) if self._last_attempt is not None \
                    else self._min_refresh_interval
                allowed_in = self._min_refresh_interval - since
                if allowed_in <= 0:
                    self._refresh_pending = False
                    return True
                if allowed_in < remaining:
                    await asyncio.sleep(allowed_in)
                    continue
                if remaining > 0:
                    await asyncio.sleep(remaining)
                return False
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except asyncio.TimeoutError:
                return False

    def mark_attempt(self) -> None:
        """Record that a resolution starts now (for the refresh rate limit)."""
        self._last_attempt = self._clock()
        self._refresh_pending = False
        if self._wake is not None:
            self._wake.clear()

    @property
    def refresh_pending(self) -> bool:
        return self._refresh_pending

    def next_backoff(self) -> float:
        return self._backoff.next_delay()

    # -- reporting ---------------------------------------------------------------------------

    def publish(self, sink: ResolverSink, endpoints: Iterable[Endpoint]) -> bool:
        """Publish a set (de-duplicated by address) unless it equals the last one.

        Also counts a success and resets the backoff. True when published.
        """
        self._counts["resolutions"] += 1
        if self._counts["consecutive_errors"] and not self._closed:
            logger.info("%s: discovery recovered after %s", self,
                        plural(self._counts["consecutive_errors"], "error"))
        self._counts["consecutive_errors"] = 0
        self._last_success = self._clock()
        self._backoff.reset()
        new = EndpointSet.from_iterable(endpoints, version=self._version + 1, dedupe=True)
        if self._last is not None and new == self._last:
            return False
        if self._closed:
            return False
        self._version += 1
        self._last = new
        self._counts["updates"] += 1
        logger.debug("%s: publishing %s (v%d)", self, plural(len(new), "endpoint"),
                     self._version)
        sink.publish(new)
        return True

    @property
    def malformed_count(self) -> int:
        """Records skipped as malformed so far (read it before an answer, pass it to
        :meth:`answer`)."""
        return self._counts["malformed"]

    def answer(self, sink: ResolverSink, endpoints: Iterable[Endpoint], *,
               malformed_before: int) -> bool:
        """Publish the endpoints of one answer, unless all its records were malformed.

        ``malformed_before`` is :attr:`malformed_count` read before the answer
        was parsed. An empty result with records skipped since is not an
        authoritative empty set (the public contract: bad data "never takes the last
        good set down"): it is reported with :meth:`fail` instead. True when
        a set was published.
        """
        endpoints = list(endpoints)
        skipped = self._counts["malformed"] - malformed_before
        if endpoints or skipped <= 0:
            return self.publish(sink, endpoints)
        self._counts["malformed_answers"] += 1
        self.fail(sink, DiscoveryError(
            f"every record of the answer was malformed ({skipped} skipped); not an "
            "authoritative empty set", target=str(self.target)))
        return False

    def fail(self, sink: ResolverSink, exc: DiscoveryError) -> None:
        """Report a failure; the balancer keeps the last good set."""
        self._counts["errors"] += 1
        self._counts["consecutive_errors"] += 1
        self._last_error = str(exc)
        if self._closed:
            return
        # One WARNING per episode (from the first failure to the next answer), then
        # DEBUG: a source that stays down must not flood the log.
        if self._counts["consecutive_errors"] == 1:
            kept = (f"keeping the last good set ({plural(len(self._last), 'endpoint')}) until "
                    "it recovers" if self._last is not None
                    else "no endpoint set yet: picks fail until it answers")
            logger.warning("%s: discovery failed: %s; %s", self, exc, kept)
        else:
            logger.debug("%s: discovery still failing (%s in a row): %s", self,
                         plural(self._counts["consecutive_errors"], "error"), exc)
        sink.error(exc)

    def malformed(self, record: str, reason: str) -> None:
        """Skip a malformed record: counted, logged once per record (then at debug level)."""
        self._counts["malformed"] += 1
        key = f"{record}: {reason}"
        if key in self._malformed_seen:
            logger.debug("%s: skipping malformed record %s", self, key)
            return
        if len(self._malformed_seen) < _MAX_REMEMBERED_MALFORMED:
            self._malformed_seen.add(key)
        logger.warning("%s: skipping malformed record %s", self, key)

    @property
    def last_set(self) -> EndpointSet | None:
        """The last set this resolver published, or None before the first."""
        return self._last

    def statistics(self) -> ResolverStats:
        """Counters of this resolver (what telemetry exports)."""
        return ResolverStats(
            **self._counts, endpoints=len(self._last) if self._last is not None else 0,
            last_error=self._last_error, last_success=self._last_success)

    def describe(self) -> dict[str, Any]:
        """Extra ``repr`` details (no secrets); subclasses add theirs."""
        return {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._started else "new")
        n = len(self._last) if self._last is not None else "-"
        extra = "".join(f" {k}={v}" for k, v in self.describe().items())
        return f"<{type(self).__name__} {self.target} {state} endpoints={n}{extra}>"
