"""Per-endpoint mutable state, kept across snapshots by address.

A resolver publishes immutable :class:`~clientlb.EndpointSet` snapshots; the
balancer keeps one :class:`EndpointState` per address so that load metrics,
counters and health survive an update that only changes, say, a weight.
Pickers hold references to these states; nothing here is copied per pick.
"""

from __future__ import annotations

import enum
from typing import Any

from .._engine.connectivity import Connectivity
from .endpoint import Endpoint
from .load import EndpointLoad

__all__ = ["EndpointState", "Health"]


class Health(str, enum.Enum):
    """Whether an endpoint may take traffic (see ``LoadBalancer.snapshot``)."""

    HEALTHY = "healthy"
    EJECTED = "ejected"  # outlier detection took it out for a while
    UNHEALTHY = "unhealthy"  # active health checks failed
    DRAINING = "draining"  # left the target (or drained by hand): in-flight calls finish


class EndpointState:
    """Everything the balancer tracks about one endpoint."""

    __slots__ = (
        "added_at",
        "address",
        "connectivity",
        "draining",
        "ejected_at",
        "ejected_until",
        "ejection_count",
        "ejection_multiplier",
        "endpoint",
        "load",
        "load_report",
        "note",
        "outlier",
        "probe",
        "probe_healthy",
        "ramp_start",
        "reconnect_backoff",
        "reported",
    )

    def __init__(self, endpoint: Endpoint, now: float, load: EndpointLoad) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.load = load
        self.added_at = now
        self.ejected_until: float | None = None
        self.ejection_count = 0  # ejections since discovered (monotonic)
        self.probe_healthy = True
        self.draining = False
        # Owned by the call engine (clientlb._engine.connectivity): whether the
        # endpoint accepts connections, and the wait before its next probe.
        self.connectivity = Connectivity.IDLE
        self.reconnect_backoff = 0.0
        # Owned by the health package (clientlb._health): when the current
        # ejection started, when a slow-start ramp began, the last health
        # state that was logged and why, and the per-endpoint counters of the
        # outlier detector and of the active checker (None until first seen).
        self.ejected_at: float | None = None
        self.ejection_multiplier = 0  # ejections not yet forgiven (gRFC A50)
        self.ramp_start: float | None = None
        self.reported: Health | None = None
        self.note = ""
        self.outlier: Any = None
        self.probe: Any = None
        # Owned by clientlb._engine.orca: the endpoint's ORCA load reports (the latest,
        # the one its weighted_round_robin weight comes from, counters); None until
        # its first report or its first weighted_round_robin picker.
        self.load_report: Any = None

    def health(self, now: float) -> Health:
        if self.draining:
            return Health.DRAINING
        if self.ejected_until is not None and now < self.ejected_until:
            return Health.EJECTED
        if not self.probe_healthy:
            return Health.UNHEALTHY
        return Health.HEALTHY

    def __repr__(self) -> str:
        return f"<EndpointState {self.address} in_flight={self.load.in_flight}>"
