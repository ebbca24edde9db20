"""Property tests of the selection maths (priorities, panic, zones) on random pools."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clientlb import Endpoint
from clientlb._core.load import EndpointLoad
from clientlb._core.state import EndpointState, Health
from clientlb._health.selection import select

pools = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", None]), st.sampled_from([0, 1, 3]),
              st.booleans()),
    min_size=1, max_size=25)


def build(spec: list[tuple[int, str | None, int, bool]]) -> list[EndpointState]:
    states = []
    for i, (priority, zone, weight, healthy) in enumerate(spec):
        s = EndpointState(Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 80, weight=weight,
                                   priority=priority, zone=zone), 0.0, EndpointLoad(0.0))
        s.probe_healthy = healthy
        states.append(s)
    return states


@settings(max_examples=300, deadline=None)
@given(pools, st.sampled_from([0.0, 0.5, 0.7]), st.sampled_from([None, "a"]),
       st.sampled_from([1.0, 1.4]))
def test_selection_invariants(spec: list[tuple[int, str | None, int, bool]], panic: float,
                              zone: str | None, of: float) -> None:
    states = build(spec)
    sel = select(states, 0.0, panic_threshold=panic, overprovisioning_factor=of,
                 local_zone=zone, ramp=None)
    assert len({id(s) for s in sel.chosen}) == len(sel.chosen)
    assert all(w > 0 and math.isfinite(w) for w in sel.weights)
    assert sel.total == len(states)
    assert sel.healthy == sum(s.health(0.0) is Health.HEALTHY for s in states)
    if sel.mode == "normal":
        assert all(s.health(0.0) is Health.HEALTHY for s in sel.chosen)
        assert sel.chosen  # something healthy exists, so something is chosen
    if any(s.probe_healthy and s.endpoint.weight > 0 for s in states):
        assert sel.mode in ("normal", "panic") and sel.chosen
    assert (sel.mode == "unavailable") == (not sel.chosen)
    if panic == 0.0:
        assert sel.mode != "panic"
    else:
        assert sel.chosen, "with panic enabled something is always chosen"
    if not sel.chosen:
        return
    # each priority level receives the share the loads say
    total = sum(sel.weights)
    for p, load in sel.levels.items():
        share = sum(w for s, w in zip(sel.chosen, sel.weights, strict=True)
                    if s.endpoint.priority == p) / total
        assert share == pytest.approx(load, abs=1e-9)
