"""Subsetting, unit by unit: configuration, the aperture's ring, rendezvous ranking, places.

No balancer here (tests/test_subset_balancer.py has it); every test is deterministic.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping

import pytest

import clientlb
from clientlb import Aperture, ConfigError, Endpoint, RandomSubset
from clientlb._subset.aperture import (
    aperture_size,
    build_ring,
    neighbours,
    slice_of,
    slot_count,
)
from clientlb._subset.config import subset_option
from clientlb._subset.peers import (
    PROVISIONAL_SLOTS,
    Place,
    locate,
    place_from_environment,
    provisional_place,
    static_place,
)
from clientlb._subset.random import rank


def addresses(n: int, prefix: str = "10") -> list[str]:
    return [f"{prefix}.{i // 250}.{i % 250}.1:8080" for i in range(n)]


def subsets(addrs: list[str], clients: int, size: int,
            weights: list[float] | None = None) -> list[dict[str, float]]:
    """Every client's aperture: address -> share of its arc covered."""
    ring = build_ring(addrs, weights or [1.0] * len(addrs))
    slots = slot_count(size, len(addrs), clients)
    return [{addrs[ring.order[p]]: share for p, share in slice_of(ring, c, clients, slots)}
            for c in range(clients)]


def loads(addrs: list[str], clients: int, size: int,
          weights: list[float] | None = None) -> dict[str, float]:
    """Each backend's load when every client sends 1 spread by its overlap weights."""
    ws = dict(zip(addrs, weights or [1.0] * len(addrs), strict=True))
    load: dict[str, float] = defaultdict(float)
    for members in subsets(addrs, clients, size, weights):
        total = sum(ws[a] * share for a, share in members.items())
        for a, share in members.items():
            load[a] += ws[a] * share / total
    return load


def opened(before: list[dict[str, float]], after: list[dict[str, float]]) -> list[int]:
    """Per client (same index), the backends it must newly connect to."""
    return [len(set(a) - set(b)) for b, a in zip(before, after, strict=False)]


# -- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "subset.size: must be an integer >= 1, got 0"),
    ({"size": 2.5}, "subset.size: must be an integer >= 1, got 2.5"),
    ({"size": True}, "subset.size: must be an integer >= 1, got True"),
    ({"client_index": -1, "client_count": 4}, "subset.client_index: must be an integer >= 0"),
    ({"client_index": 0, "client_count": 0}, "subset.client_count: must be an integer >= 1"),
    ({"client_index": 4, "client_count": 4},
     "subset.client_index: must be < client_count (4), got 4"),
    ({"client_index": 1}, "subset.client_index: client_index and client_count go together"),
    ({"client_count": 3}, "subset.client_count: client_index and client_count go together"),
    ({"peers": ""}, "subset.peers: must be a target string"),
    ({"peers": "consul:///web", "client_index": 0, "client_count": 2},
     "subset.peers: peers= discovers the client index and count"),
    ({"peers": "gopher://x"}, "subset.peers: "),
    ({"peers": "consul:///web", "client_id": ""}, "subset.client_id: must be a non-empty"),
    ({"connections_per_backend": 0}, "subset.connections_per_backend: must be an integer >= 1"),
    ({"min_size": 0}, "subset.min_size: must be an integer >= 1, got 0"),
    ({"min_healthy": 1.5}, "subset.min_healthy: must be a fraction 0..1, got 1.5"),
    ({"min_healthy": math.nan}, "subset.min_healthy: must be a fraction 0..1"),
])
def test_aperture_refuses_bad_values_naming_field_value_and_rule(
        kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Aperture(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "subset.size: must be an integer >= 1, got 0"),
    ({"size": None}, "subset.size: must be an integer >= 1, got None"),
    ({"size": 3, "seed": "x"}, "subset.seed: must be an integer or None, got 'x'"),
    ({"size": 3, "seed": True}, "subset.seed: must be an integer or None, got True"),
    ({"size": 3, "min_healthy": -0.1}, "subset.min_healthy: must be a fraction 0..1"),
])
def test_random_subset_refuses_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RandomSubset(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_configs_are_frozen_values_with_documented_defaults() -> None:
    a = Aperture()
    assert (a.size, a.connections_per_backend, a.min_size, a.min_healthy) == (None, 25, 5, 0.5)
    assert a == Aperture() and hash(a) == hash(Aperture())
    assert RandomSubset(4) == RandomSubset(size=4, seed=None, min_healthy=0.5)
    with pytest.raises(AttributeError):
        a.size = 3  # type: ignore[misc]


@pytest.mark.parametrize(("table", "message"), [
    ({"size": 3}, "services.a.subset.kind: must be \"aperture\" or \"random\", got None"),
    ({"kind": "ring"}, "services.a.subset.kind: must be \"aperture\" or \"random\", got 'ring'"),
    ({"kind": "random", "size": 3, "sede": 1},
     "services.a.subset.sede: unknown key 'sede' for kind = 'random'"),
    ({"kind": "random"}, "services.a.subset.size: missing; kind = \"random\" needs size"),
    ({"kind": "aperture", "size": -2}, "services.a.subset.size: must be an integer >= 1"),
    ("aperture", "services.a.subset: must be a table with kind"),
])
def test_subset_tables_are_checked_with_their_dotted_path(table: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        subset_option(table, "services.a.subset")
    assert str(info.value).startswith(message)


def test_subset_tables_build_the_classes_and_false_turns_subsetting_off() -> None:
    assert subset_option({"kind": "aperture", "size": 4, "client_index": 1,
                          "client_count": 9}) == Aperture(4, 1, 9)
    assert subset_option({"kind": "random", "size": 3, "seed": 7}) == RandomSubset(3, seed=7)
    assert subset_option(False) is None and subset_option(None) is None
    assert subset_option(RandomSubset(2)) == RandomSubset(2)


def test_public_names_are_exported() -> None:
    assert {"Aperture", "RandomSubset", "SubsetSnapshot"} <= set(clientlb.__all__)


# -- the ring ---------------------------------------------------------------------------------

def test_ring_arcs_are_proportional_to_weights_and_cover_the_ring() -> None:
    addrs = addresses(5)
    ring = build_ring(addrs, [1, 2, 3, 0, 4])
    assert ring.bounds[0] == 0.0 and ring.bounds[-1] == 1.0
    arcs = {addrs[i]: ring.arc(p) for p, i in enumerate(ring.order)}
    assert math.fsum(arcs.values()) == pytest.approx(1.0, abs=1e-15)
    assert [round(arcs[a] * 10, 12) for a in addrs] == [1, 2, 3, 0, 4]


def test_ring_with_every_weight_zero_gives_equal_arcs() -> None:
    ring = build_ring(addresses(4), [0, 0, 0, 0])
    assert [ring.arc(p) for p in range(4)] == [0.25] * 4


def test_ring_order_is_the_same_in_every_process_whatever_the_discovery_order() -> None:
    """Clients agree on the ring: it depends on the addresses, not the order they came in."""
    addrs = addresses(50)
    shuffled = addrs[:]
    random.Random(3).shuffle(shuffled)
    a, b = build_ring(addrs, [1] * 50), build_ring(shuffled, [1] * 50)
    assert [addrs[i] for i in a.order] == [shuffled[i] for i in b.order]
    assert a.bounds == b.bounds
    # and ring neighbours are not consecutive addresses
    assert [addrs[i] for i in a.order][:5] != addrs[:5]


def test_slot_count_and_derived_size() -> None:
    assert slot_count(size=5, backends=30, clients=20) == 4  # 4/20 >= 5/30 > 3/20
    assert slot_count(size=1, backends=1000, clients=3) == 1  # at least one slot
    assert slot_count(size=50, backends=30, clients=20) == 20  # the whole ring
    assert aperture_size(300, 1000, connections_per_backend=25, min_size=5) == 8
    assert aperture_size(300, 100_000, connections_per_backend=25, min_size=5) == 5
    assert aperture_size(30, 20, connections_per_backend=25, min_size=5) == 30  # capped


@pytest.mark.parametrize(("n", "clients", "size"), [
    (30, 20, 5), (300, 1000, 8), (10, 20, 3), (7, 3, 2), (303, 1010, 8), (1, 5, 1),
])
def test_slice_shares_add_up_to_the_slice_width(n: int, clients: int, size: int) -> None:
    ring = build_ring(addresses(n), [1.0] * n)
    slots = slot_count(size, n, clients)
    for c in range(clients):
        covered = slice_of(ring, c, clients, slots)
        assert all(0 < share <= 1 for _, share in covered)
        width = math.fsum(ring.arc(p) * share for p, share in covered)
        assert width == pytest.approx(min(1.0, slots / clients), abs=1e-12)
        assert len(covered) >= min(n, size)


@pytest.mark.parametrize(("n", "clients", "size"), [
    (30, 20, 5), (300, 1000, 8), (10, 20, 3), (7, 3, 2), (303, 1010, 8), (200, 7, 4),
])
def test_aperture_load_is_exactly_even_with_equal_client_load(
        n: int, clients: int, size: int) -> None:
    """Every point of the ring is in the same number of slices: backends get equal load."""
    load = loads(addresses(n), clients, size)
    mean = clients / n
    assert max(load.values()) / mean == pytest.approx(1.0, abs=1e-9)
    assert min(load.values()) / mean == pytest.approx(1.0, abs=1e-9)


def test_aperture_load_follows_weights() -> None:
    addrs = addresses(40)
    weights = [1.0 + (i % 4) for i in range(40)]  # 1, 2, 3, 4, 1, 2, ...
    load = loads(addrs, 50, 6, weights)
    per_weight = {a: load[a] / w for a, w in zip(addrs, weights, strict=True)}
    assert max(per_weight.values()) / min(per_weight.values()) == pytest.approx(1.0, abs=1e-9)


def test_aperture_connections_per_backend_are_nearly_even_and_far_below_full_mesh() -> None:
    addrs = addresses(300)
    members = subsets(addrs, 1000, aperture_size(300, 1000, 25, 5))
    per_backend = Counter(a for m in members for a in m)
    total = sum(per_backend.values())
    assert total <= 0.1 * 300 * 1000  # at least 90 % fewer than the full mesh
    assert max(per_backend.values()) - min(per_backend.values()) <= 1
    assert len(per_backend) == 300  # every backend is used


def test_slice_edges_on_arc_boundaries_take_no_sliver_of_a_neighbour() -> None:
    """10 clients over 10 backends, one slot each: each covers exactly one whole backend."""
    ring = build_ring(addresses(10), [1.0] * 10)
    for c in range(10):
        assert slice_of(ring, c, 10, 1) == [(c, 1.0)]


def test_neighbours_alternate_after_and_before_and_skip_empty_arcs() -> None:
    ring = build_ring(addresses(8), [1, 1, 1, 1, 0, 1, 1, 1])
    empty = next(p for p in range(8) if ring.arc(p) == 0)
    got = list(neighbours(ring, 2, 3))
    expected = [p for p in (4, 1, 5, 0, 6, 7) if p != empty]
    assert got == expected
    assert list(neighbours(ring, 0, 7)) == []  # the whole ring already


# -- churn ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "clients", "size"), [(300, 1000, 8), (30, 20, 5), (100, 37, 6)])
def test_a_backend_joining_or_leaving_opens_at_most_two_connections_per_client(
        n: int, clients: int, size: int) -> None:
    """A change moves each slice's edges by less than one arc."""
    addrs = addresses(n)
    before = subsets(addrs, clients, size)
    rnd = random.Random(5)
    for t in range(5):
        joined = subsets([*addrs, f"10.200.{t}.9:8080"], clients, size)
        assert max(opened(before, joined)) <= 2
        gone = rnd.choice(addrs)
        left = subsets([a for a in addrs if a != gone], clients, size)
        assert max(opened(before, left)) <= 2
        # far less than a full mesh opens for a joining backend (one per client)
        assert sum(opened(before, joined)) <= 0.9 * clients


@pytest.mark.parametrize(("n", "clients", "size"), [(300, 1000, 8), (30, 20, 5), (100, 37, 6)])
def test_a_client_joining_or_leaving_moves_each_client_by_at_most_its_share_of_the_ring(
        n: int, clients: int, size: int) -> None:
    """Offsets move by at most 1/clients of the ring: n/clients backends, plus the edges."""
    addrs = addresses(n)
    before = subsets(addrs, clients, size)
    bound = math.ceil(n / clients) + 2
    for after in (subsets(addrs, clients + 1, size), subsets(addrs, clients - 1, size)):
        assert max(opened(before, after)) <= bound


# -- random subsets (rendezvous) ----------------------------------------------------------------

def test_rank_is_deterministic_per_seed_and_differs_between_seeds() -> None:
    addrs = addresses(50)
    assert rank(addrs, [1] * 50, 7) == rank(addrs, [1] * 50, 7)
    assert rank(addrs, [1] * 50, 7)[:5] != rank(addrs, [1] * 50, 8)[:5]


def test_rendezvous_a_joining_backend_displaces_at_most_one_member() -> None:
    addrs = addresses(100)
    for seed in range(200):
        before = {addrs[i] for i in rank(addrs, [1] * 100, seed)[:6]}
        more = [*addrs, "10.99.0.1:8080"]
        after = {more[i] for i in rank(more, [1] * 101, seed)[:6]}
        assert len(after - before) <= 1 and len(before - after) <= 1
        gone = addrs[seed % 100]
        fewer = [a for a in addrs if a != gone]
        after = {fewer[i] for i in rank(fewer, [1] * 99, seed)[:6]}
        assert after == before if gone not in before else len(after - before) == 1


def test_weighted_rendezvous_picks_backends_in_proportion_to_weight() -> None:
    addrs = addresses(4)
    weights = [1.0, 1.0, 2.0, 4.0]
    firsts = Counter(addrs[rank(addrs, weights, seed)[0]] for seed in range(8000))
    shares = [firsts[a] / 8000 for a in addrs]
    assert shares == pytest.approx([1 / 8, 1 / 8, 2 / 8, 4 / 8], abs=0.02)


def test_rank_puts_zero_weight_backends_last() -> None:
    addrs = addresses(6)
    order = rank(addrs, [1, 0, 1, 1, 0, 1], 3)
    assert set(order[-2:]) == {1, 4}


# -- places -----------------------------------------------------------------------------------

def env(**values: str) -> Mapping[str, str]:
    return values


def test_place_from_index_and_count_variables() -> None:
    assert place_from_environment(env(CLIENTLB_CLIENT_INDEX="3", CLIENTLB_CLIENT_COUNT="8")) \
        == Place(3, 8, "environment")


def test_place_from_a_statefulset_hostname_ordinal() -> None:
    assert place_from_environment(env(HOSTNAME="web-12", CLIENTLB_CLIENT_COUNT="20")) \
        == Place(12, 20, "hostname")
    # the index variable wins over the host name
    assert place_from_environment(env(HOSTNAME="web-12", CLIENTLB_CLIENT_COUNT="20",
                                      CLIENTLB_CLIENT_INDEX="4")).index == 4


def test_no_count_variable_means_no_place_from_the_environment() -> None:
    assert place_from_environment(env(HOSTNAME="web-12")) is None


@pytest.mark.parametrize(("environ", "message"), [
    ({"CLIENTLB_CLIENT_INDEX": "2"}, "CLIENTLB_CLIENT_INDEX: is set but CLIENTLB_CLIENT_COUNT"),
    ({"CLIENTLB_CLIENT_COUNT": "x"}, "CLIENTLB_CLIENT_COUNT: must be an integer >= 1, got 'x'"),
    ({"CLIENTLB_CLIENT_COUNT": "0"}, "CLIENTLB_CLIENT_COUNT: must be an integer >= 1, got '0'"),
    ({"CLIENTLB_CLIENT_COUNT": "4", "CLIENTLB_CLIENT_INDEX": "-1"},
     "CLIENTLB_CLIENT_INDEX: must be an integer >= 0, got '-1'"),
    ({"CLIENTLB_CLIENT_COUNT": "4", "CLIENTLB_CLIENT_INDEX": "4"},
     "CLIENTLB_CLIENT_INDEX: gives index 4, which must be < CLIENTLB_CLIENT_COUNT (4)"),
    ({"CLIENTLB_CLIENT_COUNT": "4", "HOSTNAME": "web-9"},
     "HOSTNAME: gives index 9, which must be < CLIENTLB_CLIENT_COUNT (4)"),
    ({"CLIENTLB_CLIENT_COUNT": "4", "HOSTNAME": "laptop"},
     "CLIENTLB_CLIENT_COUNT: is set but neither CLIENTLB_CLIENT_INDEX nor a HOSTNAME"),
])
def test_bad_environment_is_a_config_error_naming_the_variable(
        environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        place_from_environment(environ)
    assert str(info.value).startswith(message)


def test_static_place_prefers_the_configuration_and_explains_a_missing_place() -> None:
    assert static_place(Aperture(client_index=1, client_count=3),
                        env(CLIENTLB_CLIENT_INDEX="0", CLIENTLB_CLIENT_COUNT="9")) \
        == Place(1, 3, "config")
    with pytest.raises(ConfigError, match=r"^subset: the aperture needs this client's place"):
        static_place(Aperture(), env())


def peer(address: str, **metadata: object) -> Endpoint:
    return Endpoint.parse(address, metadata=metadata)


def test_locate_ranks_the_peers_by_address() -> None:
    peers = [peer("10.0.0.3:80"), peer("10.0.0.1:80"), peer("10.0.0.2:80")]
    assert locate(peers, "10.0.0.2:80") == Place(1, 3, "peers")
    assert locate(peers, "10.0.0.3") == Place(2, 3, "peers")  # by host


def test_locate_finds_itself_by_consul_service_id_or_etcd_key() -> None:
    consul = [peer("10.0.0.1:80", service_id="web-a"), peer("10.0.0.2:80", service_id="web-b")]
    assert locate(consul, "web-b") == Place(1, 2, "peers")
    etcd = [peer("10.0.0.1:80", key="clients/x"), peer("10.0.0.2:80", key="clients/y")]
    assert locate(etcd, "clients/x") == Place(0, 2, "peers")


def test_peers_are_ranked_by_registration_name_so_a_restart_keeps_every_place() -> None:
    """A pod that comes back with a new address but the same service ID takes back its
    rank: nobody else moves (ranking by address would shift everyone after it)."""
    before = [peer(f"10.0.0.{i}:80", service_id=f"web-{i}") for i in range(1, 6)]
    after = [*before[:2], peer("10.0.9.99:80", service_id="web-3"), *before[3:]]
    for me in ("web-1", "web-2", "web-4", "web-5"):
        assert locate(before, me) == locate(after, me)
    assert locate(after, "web-3") == Place(2, 5, "peers")
    assert locate(after, "10.0.9.99:80") == Place(2, 5, "peers")


def test_locate_prefers_an_exact_address_over_a_shared_host() -> None:
    peers = [peer("10.0.0.1:80"), peer("10.0.0.1:81"), peer("10.0.0.2:80")]
    assert locate(peers, "10.0.0.1:81") == Place(1, 3, "peers")
    assert locate(peers, "10.0.0.1") == Place(0, 3, "peers")  # ambiguous: the first


def test_a_client_missing_from_its_peers_counts_itself_in() -> None:
    peers = [peer("10.0.0.1:80"), peer("10.0.0.3:80")]
    assert locate(peers, "10.0.0.2:80") == Place(1, 3, "peers (not listed)")
    assert locate([], "anything") == Place(0, 1, "peers (not listed)")


def test_provisional_places_spread_clients_over_a_fine_ring() -> None:
    places = {provisional_place(f"pod-{i}").index for i in range(100)}
    assert len(places) == 100
    assert provisional_place("pod-1") == provisional_place("pod-1")
    assert provisional_place("pod-1").count == PROVISIONAL_SLOTS
