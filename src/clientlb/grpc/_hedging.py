"""Hedged unary-unary calls for the sync channel (gRFC A6 hedging policy).

The first attempt starts at once; while none has answered, another starts
every ``Hedging.delay`` seconds on an endpoint not yet tried, up to
``Hedging.max_attempts``. The first answer that is a success or a fatal
error wins; an attempt failing with a non-fatal code (``non_fatal_codes``,
the channel's ``retryable_codes``, or a connect failure) starts the next
hedge at once. The losers are cancelled and report ``CANCELLED`` (they say nothing
about their endpoint). Each hedge after the first is withdrawn from the
balancer's retry budget; when it is spent, no more hedges start. Hedged
attempts are sent in parallel, so only use hedging for idempotent methods
(``Hedging(methods=...)``).
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

import grpc

from ._common import classify, is_local_origin, take_retry

if TYPE_CHECKING:
    from ._channel import BalancedChannel, _Key

__all__ = ["hedged_call"]


def hedged_call(ch: BalancedChannel, key: _Key, request: Any, timeout: float | None,
                metadata: Any, credentials: Any, wait_for_ready: bool | None,
                compression: Any, with_call: bool) -> Any:
    hedging = ch._config.hedging
    assert hedging is not None
    start = time.monotonic()
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()
    calls: list[Any] = []
    tried: set[str] = set()
    failure_codes = ch._failure_codes
    non_fatal = hedging.non_fatal_codes | ch._config.retry.retryable_codes

    def remaining() -> float | None:
        return None if timeout is None else max(start + timeout - time.monotonic(), 0.0)

    hkey = ch._hash(key[1], request, metadata)

    def launch() -> None:
        pick, sub = ch._acquire(tried or None, hkey)
        tried.add(pick.endpoint.address)
        try:
            call = sub.callable(key).future(
                request, timeout=remaining(), metadata=metadata, credentials=credentials,
                wait_for_ready=wait_for_ready, compression=compression)
        except BaseException:
            pick.done("cancelled")
            sub.release()
            raise

        def finished(c: Any) -> None:
            pick.done(classify(c.code(), c.details(), failure_codes))
            sub.release()
            done.put(c)

        calls.append(call)
        call.add_done_callback(finished)

    budget = ch._config.retry.budget
    if budget is not None:
        budget.deposit()
    allowed = [True]

    def may_hedge() -> bool:
        # Every hedge is a retry for the balancer's budget (gRFC A6 throttling).
        if allowed[0] and len(calls) < hedging.max_attempts:
            allowed[0] = take_retry(ch.lb, budget, attempt=len(calls) + 1, reason="hedge")
            return allowed[0]
        return False

    launch()
    pending = 1
    winner: Any = None
    try:
        while winner is None:
            hedge_left = allowed[0] and len(calls) < hedging.max_attempts
            # Without hedges left, wait for an answer: every attempt has the deadline.
            wait = hedging.delay if hedge_left else None
            try:
                call = done.get(timeout=wait)
            except queue.Empty:
                if may_hedge():
                    launch()
                    pending += 1
                continue
            pending -= 1
            code = call.code()
            if code is grpc.StatusCode.OK or not (
                    code in non_fatal or is_local_origin(code, call.details())):
                winner = call
            elif may_hedge():
                launch()
                pending += 1
            elif pending == 0:
                winner = call
    finally:
        for c in calls:
            if c is not winner:
                c.cancel()
    if with_call:
        return winner.result(), winner
    return winner.result()
