"""Subsetting inside the balancer: every strategy, snapshot, widening, health, live changes,
configuration files, the Registry and discovered places (static, Consul, asyncio).

Fake clocks and seeded randomness; discovery tests poll for a state with a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import clientlb
from clientlb import (
    STRATEGIES,
    Aperture,
    ConfigError,
    Endpoint,
    HealthCheck,
    LoadBalancer,
    Outcome,
    OutlierDetection,
    RandomSubset,
    Registry,
)
from clientlb._health.checks import HealthChecker

from ._helpers import FakeClock, closing, wait_until
from .consul_emulator import ConsulEmulator

ADDRS = [f"10.0.{i // 200}.{i % 200 + 1}:80" for i in range(30)]
APERTURE = Aperture(size=5, client_index=3, client_count=20)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLIENTLB_CLIENT_INDEX", "CLIENTLB_CLIENT_COUNT", "CLIENTLB_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOSTNAME", "test-host")


def make_lb(clock: FakeClock | None = None, *, subset: object = APERTURE,
            strategy: str = "round_robin", targets: list[str] | list[Endpoint] | None = None,
            **options: object) -> LoadBalancer:
    return closing(LoadBalancer(targets or ADDRS, strategy=strategy,  # type: ignore[arg-type]
                                subset=subset, clock=clock or FakeClock(),
                                rng=random.Random(11), **options))  # type: ignore[arg-type]


def members(lb: LoadBalancer) -> dict[str, float]:
    return {e.address: e.effective_weight for e in lb.snapshot().endpoints if e.in_subset}


def picks(lb: LoadBalancer, n: int, *, keys: bool = False) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for i in range(n):
        p = lb.pick(f"user-{i}" if keys else None)
        counts[p.endpoint.address] += 1
        p.done()
    return counts


# -- picks use the subset, discovery shows everything -------------------------------------------

@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("subset", [APERTURE, RandomSubset(5, seed=42)], ids=["aperture", "random"])
def test_every_strategy_picks_only_inside_the_subset(strategy: str, subset: object) -> None:
    with make_lb(strategy=strategy, subset=subset) as lb:
        inside = members(lb)
        assert 5 <= len(inside) <= 7
        assert set(lb.endpoints()) == {Endpoint.parse(a) for a in ADDRS}  # all discovered
        counts = picks(lb, 600, keys=STRATEGIES[strategy].uses_key)
        assert set(counts) <= set(inside)
        assert len(counts) >= 3


def test_aperture_weights_each_member_by_the_share_of_its_arc_covered() -> None:
    """Client 3 of 20 with 4 slots covers 6 arcs of 1/30; its edges take half an arc each."""
    with make_lb() as lb:
        weights = members(lb)
        assert sorted(weights.values()) == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
        counts = picks(lb, 1200)  # smooth round robin: exact proportions
        for address, w in weights.items():
            assert counts[address] == 1200 * w / sum(weights.values())


def test_twenty_clients_spread_equal_load_evenly_over_every_backend() -> None:
    total: collections.Counter[str] = collections.Counter()
    for index in range(20):
        with make_lb(subset=Aperture(size=5, client_index=index, client_count=20)) as lb:
            total += picks(lb, 600)
    assert set(total) == set(ADDRS)
    assert max(total.values()) == min(total.values()) == 400


def test_random_subset_is_reproducible_with_a_seeded_rng_and_equally_weighted() -> None:
    first = members(make_lb(subset=RandomSubset(6)))
    assert first == members(make_lb(subset=RandomSubset(6)))  # seed drawn from rng=Random(11)
    assert len(first) == 6 and set(first.values()) == {1.0}
    assert first != members(make_lb(subset=RandomSubset(6, seed=1)))


def test_snapshot_shows_membership_the_width_and_the_place() -> None:
    with make_lb() as lb:
        snap = lb.snapshot()
        assert snap.subset == clientlb.SubsetSnapshot(
            kind="aperture", size=5, endpoints=7, widened=0, width=pytest.approx(0.2),
            base_width=0.2, client_index=3, client_count=20, place="config", seed=None)
        assert sum(e.in_subset for e in snap.endpoints) == 7
        assert len(snap.endpoints) == 30
        assert all(e.effective_weight == 0 for e in snap.endpoints if not e.in_subset)


def test_without_subset_every_endpoint_is_in_subset_and_the_snapshot_has_none() -> None:
    with LoadBalancer(ADDRS[:3]) as lb:
        snap = lb.snapshot()
        assert snap.subset is None and all(e.in_subset for e in snap.endpoints)


def test_derived_size_targets_connections_per_backend() -> None:
    """size=None: 25 connections per backend with 20 clients over 30 backends is a full mesh,
    and 4 per backend gives ceil(4 × 30 / 20) = 6 backends per client."""
    with make_lb(subset=Aperture(client_index=0, client_count=20)) as lb:
        assert lb.snapshot().subset.size == 30  # type: ignore[union-attr]
        assert len(members(lb)) == 30
    with make_lb(subset=Aperture(client_index=0, client_count=20,
                                 connections_per_backend=4)) as lb:
        assert lb.snapshot().subset.size == 6  # type: ignore[union-attr]


def test_each_priority_level_gets_its_own_subset() -> None:
    eps = [Endpoint.parse(a, priority=0 if i < 20 else 1) for i, a in enumerate(ADDRS)]
    with make_lb(targets=eps, subset=Aperture(size=3, client_index=0, client_count=10)) as lb:
        inside = members(lb)
        levels = collections.Counter(Endpoint.parse(a).port for a in inside)  # all :80
        assert sum(levels.values()) == len(inside)
        by_priority = collections.Counter(
            e.endpoint.priority for e in lb.snapshot().endpoints if e.in_subset)
        assert by_priority[0] >= 3 and by_priority[1] >= 3


def test_zero_weight_endpoints_never_enter_an_aperture() -> None:
    eps = [Endpoint.parse(a, weight=0 if i % 2 else 1) for i, a in enumerate(ADDRS)]
    with make_lb(targets=eps, subset=Aperture(size=4, client_index=1, client_count=5)) as lb:
        assert all(Endpoint.parse(a) in {Endpoint.parse(e) for e in ADDRS[::2]}
                   for a in members(lb))


# -- widening -----------------------------------------------------------------------------------

def fail(lb: LoadBalancer, address: str, times: int = 5) -> None:
    for _ in range(times):
        lb.pick(prefer=address).done(Outcome.FAILURE)


def test_aperture_widens_to_its_ring_neighbours_when_half_its_members_are_ejected() -> None:
    clock = FakeClock()
    od = OutlierDetection(max_ejection_percent=100, base_ejection_time=30)
    with make_lb(clock, outlier_detection=od) as lb:
        base = members(lb)
        victims = sorted(base)[:4]  # 4 of 7 out: 3/7 < 50 %
        for address in victims[:3]:
            fail(lb, address)
        assert lb.snapshot().subset.widened == 0  # type: ignore[union-attr]  # 4/7 may take traffic
        fail(lb, victims[3])
        snap = lb.snapshot()
        info = snap.subset
        assert info is not None and info.widened >= 1
        assert info.width is not None and info.base_width is not None
        assert info.width > info.base_width
        widened = members(lb)
        assert set(base) < set(widened)
        usable = [e for e in snap.endpoints if e.in_subset and e.state == "healthy"]
        assert len(usable) >= 0.5 * info.endpoints
        assert set(picks(lb, 300)) <= {e.address for e in usable}
        assert snap.mode == "normal"  # no panic: healthy neighbours came in instead
        clock.advance(31)  # the ejections end: back to its own slice
        lb.pick().done()
        assert members(lb) == base and lb.snapshot().subset.widened == 0  # type: ignore[union-attr]


def test_draining_members_widen_a_random_subset_to_the_next_ranked() -> None:
    with make_lb(subset=RandomSubset(4, seed=3)) as lb:
        base = set(members(lb))
        for address in sorted(base)[:3]:
            lb.drain(address)
        info = lb.snapshot().subset
        assert info is not None and info.widened == 2  # 1 usable of 4, then 2/5, 3/6
        assert set(picks(lb, 200)).isdisjoint(sorted(base)[:3])
        for address in sorted(base)[:3]:
            lb.undrain(address)
        assert set(members(lb)) == base


def test_min_healthy_zero_never_widens() -> None:
    subset = Aperture(size=5, client_index=3, client_count=20, min_healthy=0)
    with make_lb(subset=subset) as lb:
        for address in list(members(lb)):
            lb.drain(address)
        assert lb.snapshot().subset.widened == 0  # type: ignore[union-attr]


# -- health inside the subset -------------------------------------------------------------------

def test_active_checks_probe_only_the_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HealthChecker, "start", lambda self: None)  # probes fed by hand
    with make_lb(health_check=HealthCheck(kind="tcp")) as lb:
        probed = {s.address for s in lb._health.probe_targets()}
        assert probed == set(members(lb))


def test_max_ejection_percent_counts_the_subset_not_the_whole_target() -> None:
    """10 % of the 7 members (at least one) may be ejected, not 10 % of all 30 endpoints."""
    with make_lb() as lb:
        first, second = sorted(members(lb))[:2]
        fail(lb, first)
        fail(lb, second)
        states = lb.snapshot().by_address()
        assert (states[first].state, states[second].state) == ("ejected", "healthy")


# -- live changes, configuration, registry --------------------------------------------------------

def test_set_subset_switches_live_and_in_flight_calls_finish() -> None:
    with LoadBalancer(ADDRS, strategy="round_robin", rng=random.Random(1)) as lb:
        in_flight = lb.pick()
        lb.set_subset(APERTURE)
        assert len(members(lb)) == 7
        lb.set_subset(RandomSubset(3, seed=9))
        assert len(members(lb)) == 3
        lb.set_subset(None)
        assert len(members(lb)) == 30 and lb.snapshot().subset is None
        in_flight.done()
        assert lb.in_flight() == 0
        with pytest.raises(ConfigError, match=r"^subset: must be a clientlb\.Aperture"):
            lb.set_subset("aperture")  # type: ignore[arg-type]


@pytest.mark.parametrize(("subset", "message"), [
    ("aperture", "subset: must be a clientlb.Aperture, a clientlb.RandomSubset or None"),
    (Aperture(), "subset: the aperture needs this client's place among its peers"),
])
def test_balancer_refuses_a_bad_subset_at_construction(subset: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_lb(subset=subset)
    assert str(info.value).startswith(message)


def test_aperture_takes_its_place_from_a_statefulset_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "checkout-7")
    monkeypatch.setenv("CLIENTLB_CLIENT_COUNT", "20")
    with make_lb(subset=Aperture(size=5)) as lb:
        info = lb.snapshot().subset
        assert info is not None
        assert (info.client_index, info.client_count, info.place) == (7, 20, "hostname")


def test_registry_creates_updates_and_removes_subsets() -> None:
    with Registry(telemetry=False) as registry:
        lb = registry.create("users", ADDRS, subset=APERTURE, rng=random.Random(2))
        assert len(members(lb)) == 7
        registry.update("users", subset={"kind": "random", "size": 4, "seed": 5})
        assert lb.snapshot().subset.kind == "random"  # type: ignore[union-attr]
        assert len(members(lb)) == 4
        with pytest.raises(ConfigError, match=r"^subset: must be a table with kind"):
            registry.update("users", subset=5)
        with pytest.raises(ConfigError, match=r"^subset: the aperture needs this client's place"):
            registry.update("users", strategy="random", subset={"kind": "aperture"})
        assert lb.strategy.name == "peak_ewma"  # nothing applied
        registry.update("users", subset=False)
        assert lb.snapshot().subset is None


def test_configuration_file_sets_a_subset_and_names_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "clientlb.toml"
    path.write_text(f"""
[services.users]
target = {ADDRS!r}
strategy = "least_request"

[services.users.subset]
kind = "aperture"
size = 5
client_index = 3
client_count = 20
""")
    with Registry.from_config(path, telemetry=False) as registry:
        info = registry.get("users").snapshot().subset
        assert info is not None and (info.kind, info.size, info.client_index) == ("aperture", 5, 3)
    bad = {"services": {"users": {"target": ADDRS, "subset": {"kind": "aperture", "sise": 5}}}}
    with pytest.raises(ConfigError, match=r"^services\.users\.subset\.sise: unknown key 'sise'"):
        Registry.from_config(bad, telemetry=False)
    bad = {"services": {"users": {"target": ADDRS, "subset": {"kind": "random", "size": 0}}}}
    with pytest.raises(ConfigError, match=r"^services\.users\.subset\.size: must be an integer"):
        Registry.from_config(bad, telemetry=False)


def test_reload_turns_subsetting_on_and_off() -> None:
    config = {"services": {"users": {"target": ADDRS}}}
    with Registry.from_config(config, telemetry=False) as registry:
        with_subset = {"services": {"users": {"target": ADDRS, "subset": {
            "kind": "random", "size": 2, "seed": 1}}}}
        assert registry.reload(with_subset)["updated"] == ["users"]
        assert len(members(registry.get("users"))) == 2
        registry.reload(config)
        assert registry.get("users").snapshot().subset is None


# -- discovered places ----------------------------------------------------------------------------

def test_peers_from_a_static_target_give_the_place_by_sorted_address() -> None:
    peers = "static://10.9.0.3:7000,10.9.0.1:7000,10.9.0.2:7000"
    with make_lb(subset=Aperture(size=5, peers=peers, client_id="10.9.0.2:7000")) as lb:
        info = lb.snapshot().subset
        assert info is not None
        assert (info.client_index, info.client_count, info.place) == (1, 3, "peers")


def test_peers_default_client_id_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENTLB_CLIENT_ID", "10.9.0.3")
    peers = "static://10.9.0.3:7000,10.9.0.1:7000"
    with make_lb(subset=Aperture(size=5, peers=peers)) as lb:
        assert lb.snapshot().subset.client_index == 1  # type: ignore[union-attr]


@pytest.fixture
def consul() -> Iterator[ConsulEmulator]:
    emulator = ConsulEmulator()
    yield emulator
    emulator.close()


def place(lb: LoadBalancer) -> tuple[int | None, int | None, str | None]:
    info = lb.snapshot().subset
    assert info is not None
    return info.client_index, info.client_count, info.place


def test_peers_discovered_in_consul_follow_the_clients_scaling(consul: ConsulEmulator) -> None:
    for i in range(4):
        consul.register("web", f"web-{i}", address=f"10.8.0.{i + 1}", port=8000)
    subset = Aperture(size=5, peers=f"consul://{consul.address}/web", client_id="web-2")
    with make_lb(subset=subset) as lb:
        wait_until(lambda: place(lb) == (2, 4, "peers"), message="the first place")
        before = set(members(lb))
        consul.register("web", "web-10", address="10.8.0.9", port=8000)  # ranked by ID
        wait_until(lambda: place(lb) == (3, 5, "peers"), message="a client joined")
        assert set(members(lb)) != before
        consul.deregister("web", "web-2")  # this client's own registration went away
        wait_until(lambda: place(lb)[2] == "peers (not listed)", message="not listed")
        assert place(lb) == (3, 5, "peers (not listed)")  # after web-0, web-1, web-10


def test_peers_before_the_first_answer_use_a_provisional_place(consul: ConsulEmulator) -> None:
    consul.fail_with = 500
    subset = Aperture(size=5, peers=f"consul://{consul.address}/web", client_id="web-0")
    with make_lb(subset=subset) as lb:
        _, count, source = place(lb)
        assert source == "provisional" and count == 1 << 16
        assert 5 <= len(members(lb)) <= 7  # a slice of size 5, somewhere


def test_subsetting_with_discovered_peers_inside_asyncio() -> None:
    async def main() -> tuple[int | None, int | None, str | None]:
        peers = "static://10.9.0.1:7000,10.9.0.2:7000"
        lb = LoadBalancer(ADDRS, subset=Aperture(size=5, peers=peers, client_id="10.9.0.2:7000"))
        await lb.await_ready()
        for _ in range(100):  # the peers resolver is a task of this loop
            if place(lb)[2] == "peers":
                break
            await asyncio.sleep(0)
        result = place(lb)
        await lb.aclose()
        return result

    assert asyncio.run(main()) == (1, 2, "peers")
