"""The threads that run the attempts of hedged sync requests (docs/http.md, "Hedged requests").

A blocking httpcore call cannot be cancelled, nor can a thread blocked in one be told
that another attempt answered first. So a sync request that may be hedged runs each
of its attempts in one of these threads while the caller's thread waits for the first
answer, and an attempt that lost finishes in its thread (its response drained and
closed when it arrives).

One pool for the process, :data:`HEDGE_THREADS`: threads start on demand up to
:data:`SIZE` and end after :data:`IDLE` seconds without work, so an idle process keeps
none and a busy one never a thread per request. When every thread is busy a request
is simply not hedged (it runs in the caller's thread, as without hedging): the pool
never makes a request wait for a thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["HEDGE_THREADS", "IDLE", "SIZE", "WorkerPool"]

logger = logging.getLogger("clientlb.http")

#: Threads at most: 16 hedged requests in flight at once, two attempts each.
SIZE = 32
#: Seconds a thread waits for work before it ends.
IDLE = 30.0


class WorkerPool:
    """Up to ``size`` daemon threads that run jobs at once or refuse them (never queue)."""

    __slots__ = ("_cond", "_idle", "_idle_for", "_jobs", "_name", "_size", "_threads")

    def __init__(self, size: int = SIZE, idle: float = IDLE, name: str = "clientlb-hedge"
                 ) -> None:
        self._size = size
        self._idle_for = idle
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._threads = 0
        self._idle = 0

    def has_room(self) -> bool:
        """Would a job start at once (an idle thread, or room for a new one)?"""
        with self._cond:
            return self._idle > len(self._jobs) or self._threads < self._size

    def try_submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` in a pool thread now; False (and nothing done) when none is free."""
        with self._cond:
            if self._idle > len(self._jobs):
                self._jobs.append(job)
                self._cond.notify()
                return True
            if self._threads >= self._size:
                return False
            self._threads += 1
        try:
            threading.Thread(target=self._work, args=(job,), name=self._name,
                             daemon=True).start()
        except RuntimeError:  # interpreter shutdown
            with self._cond:
                self._threads -= 1
            return False
        return True

    def _work(self, job: Callable[[], None] | None) -> None:
        while job is not None:
            try:
                job()
            except BaseException:  # a job reports its own errors; this is a bug
                logger.exception("a hedged attempt raised in its thread")
            job = self._next()

    def _next(self) -> Callable[[], None] | None:
        with self._cond:
            self._idle += 1
            try:
                deadline = time.monotonic() + self._idle_for
                while not self._jobs:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._threads -= 1
                        return None
                    self._cond.wait(left)
                return self._jobs.popleft()
            finally:
                self._idle -= 1

    def __repr__(self) -> str:
        with self._cond:
            return f"<WorkerPool {self._name} threads={self._threads}/{self._size} " \
                   f"idle={self._idle}>"


HEDGE_THREADS = WorkerPool()
