"""Subsetting: each client uses a few backends, not all (docs/architecture.md, "Subsetting").

:mod:`.config` (what the user writes), :mod:`.aperture` (the deterministic
aperture's ring), :mod:`.random` (rendezvous-hashed random subsets, gRFC A68),
:mod:`.peers` (each client's place: configured, environment, discovered) and
:mod:`.subsetter` (the balancer's view: members, weights, widening).
"""

from __future__ import annotations

from .config import Aperture, RandomSubset, SubsetConfig, check_subset, subset_option
from .subsetter import SubsetSnapshot, Subsetter

__all__ = [
    "Aperture",
    "RandomSubset",
    "SubsetConfig",
    "SubsetSnapshot",
    "Subsetter",
    "check_subset",
    "subset_option",
]
