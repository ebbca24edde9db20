"""What the health layer may see and do of its balancer: the :class:`BalancerView` contract.

The health manager decides which endpoints may take traffic; the balancer owns the
endpoint states, the lock that guards them and the picker built from them. This
protocol lists the little the manager needs of each, so that the two meet at one typed
seam instead of the manager reaching into the balancer's private attributes (issue 12),
as grpc-go draws the line between a balancer and its ``ClientConn``
(``balancer/balancer.go``). :class:`~clientlb.LoadBalancer` implements it; its members
are public in name only (the layer's contract, not ``clientlb``'s API). The table of
members and the rules are in docs/architecture.md, "Health ↔ balancer: the contract":
everything that reads or writes endpoint states, or rebuilds the picker, runs inside
``with lb.locked():`` (re-entrant) — except :meth:`BalancerView.endpoint_states` called
to *list* endpoints (the active checker does, from its own thread).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._core.outcome import Outcome
    from .._core.state import EndpointState
    from .._core.target import Target

__all__ = ["BalancerView", "OutcomeListener"]

#: ``listener(state, outcome, latency, now)``, called after every outcome.
OutcomeListener = Callable[["EndpointState", "Outcome", float, float], None]


class BalancerView(Protocol):
    """The balancer as the health layer sees it (implemented by ``LoadBalancer``)."""

    # -- identity and injected dependencies ------------------------------------------------

    @property
    def name(self) -> str:
        """The logical service name, for log lines and the circuit breaker's errors."""
        ...

    @property
    def target(self) -> Target:
        """The parsed target (with ``name``, it gives the name health checks present)."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """The balancer's monotonic clock; health reads time only through it."""
        ...

    @property
    def rng(self) -> random.Random:
        """The balancer's random source (outlier detection draws from it)."""
        ...

    @property
    def closed(self) -> bool:
        """True once the balancer is closed: health then changes nothing more."""
        ...

    # -- the lock and the picker -----------------------------------------------------------

    def locked(self, *, blocking: bool = True) -> AbstractContextManager[bool]:
        """Hold the balancer's (re-entrant) lock for a ``with`` block.

        The block gets True when it holds the lock. With ``blocking=False`` it
        gets False, without the lock, when another thread has it — the caller
        then skips its work (``pick()``'s health tick must never wait).
        """
        ...

    def rebuild_locked(self, now: float) -> None:
        """Rebuild the picker from the current states; call it inside :meth:`locked`.

        The rebuild calls back into ``HealthManager.select``. Do not call it
        once :attr:`closed` is True.
        """
        ...

    def rebuild(self) -> None:
        """Take the lock and rebuild the picker, unless the balancer is closed."""
        ...

    @property
    def health_deadline(self) -> float:
        """The earliest instant at which ``pick()`` must call ``HealthManager.tick``."""
        ...

    @health_deadline.setter
    def health_deadline(self, deadline: float) -> None:
        """Set by the manager (under the lock) after every selection and tick."""
        ...

    # -- endpoint states -------------------------------------------------------------------

    def endpoint_states(self) -> list[EndpointState]:
        """The states of the current endpoint set, in its order, ``drain()``-ed ones included.

        Safe without the lock (a consistent list under it): an endpoint whose
        state is not there yet is left out.
        """
        ...

    def draining_states(self) -> list[EndpointState]:
        """Endpoints discovery removed that still have calls in flight."""
        ...

    def states_in_use(self) -> list[EndpointState]:
        """:meth:`endpoint_states` narrowed to the balancer's subset (``subset=``), the
        endpoints it may pick: active checks probe these, and ``max_ejection_percent``
        counts among these. The same list without subsetting. Safe without the lock.
        """
        ...

    # -- feedback and discovery ------------------------------------------------------------

    def add_outcome_listener(self, listener: OutcomeListener) -> None:
        """Call ``listener(state, outcome, latency, now)`` after every outcome."""
        ...

    def remove_listener(self, listener: Callable[..., None]) -> None:
        """Stop calling ``listener`` (outcome, diff and error listeners alike)."""
        ...

    def refresh(self) -> None:
        """Ask discovery to re-resolve early (a hint; may raise, callers log it)."""
        ...
