"""clientlb.Registry: named balancers created, changed live and deleted at runtime."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import clientlb
from clientlb import ConfigError, Registry

from ._helpers import FakeClock, wait_until


@pytest.fixture
def registry(clock: FakeClock) -> Iterator[Registry]:
    reg = Registry(telemetry=False, defaults={"clock": clock, "rng": random.Random(3)})
    yield reg
    reg.close()


def test_create_then_get_returns_the_same_balancer(registry: Registry) -> None:
    lb = registry.create("users", "static://127.0.0.1:1,127.0.0.1:2", strategy="round_robin")
    assert registry.get("users") is lb
    assert registry["users"] is lb
    assert "users" in registry and len(registry) == 1 and list(registry) == ["users"]
    assert lb.name == "users"
    assert repr(registry) == "<Registry [1 balancers: users]>"


def test_snapshots_show_every_balancer_by_name(registry: Registry) -> None:
    registry.create("users", ["127.0.0.1:1", "127.0.0.1:2"])
    registry.create("orders", ["127.0.0.1:3"])
    registry.get("users").drain("127.0.0.1:2")
    snapshots = registry.snapshots()
    assert list(snapshots) == ["orders", "users"]
    assert {e.address: e.state for e in snapshots["users"].endpoints} == {
        "127.0.0.1:1": "healthy", "127.0.0.1:2": "draining"}


def test_create_refuses_a_name_in_use(registry: Registry) -> None:
    registry.create("users", ["127.0.0.1:1"])
    with pytest.raises(ConfigError, match="a balancer named 'users' already exists"):
        registry.create("users", ["127.0.0.1:2"])


def test_create_reports_an_unknown_option_as_a_config_error(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="unknown argument 'stratgy'"):
        registry.create("users", ["127.0.0.1:1"], stratgy="random")
    assert "users" not in registry


def test_get_of_an_unknown_name_lists_the_known_ones(registry: Registry) -> None:
    registry.create("users", ["127.0.0.1:1"])
    with pytest.raises(KeyError, match=r"no balancer named 'orders' \(registered: users\)"):
        registry.get("orders")


def test_update_switches_strategy_live_without_dropping_in_flight_calls(
        registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1", "127.0.0.1:2"], strategy="round_robin")
    in_flight = lb.pick()
    assert registry.update("users", strategy="least_request") is lb
    assert lb.strategy.name == "least_request"
    assert lb.in_flight() == 1
    busy = in_flight.endpoint.address
    with lb.pick() as p:
        assert p.endpoint.address != busy  # the new strategy sees the call in flight
    in_flight.done()
    assert lb.in_flight() == 0


def test_update_accepts_a_strategy_table_and_weights(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1", "127.0.0.1:2"])
    registry.update("users", strategy={"name": "maglev", "table_size": 251},
                    weights={"127.0.0.1:1": 4})
    assert isinstance(lb.strategy, clientlb.Maglev)
    assert lb.strategy.table_size == 251
    assert lb.snapshot().by_address()["127.0.0.1:1"].effective_weight == 4


def test_update_accepts_a_strategy_object(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1"])
    registry.update("users", strategy=clientlb.PeakEwma(decay=5.0))
    assert lb.strategy == clientlb.PeakEwma(decay=5.0)


def test_update_validates_everything_before_applying_anything(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1"], strategy="round_robin")
    with pytest.raises(ConfigError, match=r"weights\.127\.0\.0\.1:1: weight must be a number >= 0"):
        registry.update("users", strategy="random", weights={"127.0.0.1:1": -2})
    assert lb.strategy.name == "round_robin"
    with pytest.raises(ConfigError, match="strategy: unknown strategy 'fastest'; choose one"):
        registry.update("users", strategy="fastest")


def test_update_refuses_an_option_that_cannot_change_live(registry: Registry) -> None:
    registry.create("users", ["127.0.0.1:1"])
    with pytest.raises(ConfigError, match="'first_resolution_timeout' cannot be changed on a live"):
        registry.update("users", first_resolution_timeout=3)


@pytest.mark.skipif(not hasattr(clientlb, "RetryPolicy"), reason="needs the retry layer")
def test_update_replaces_the_retry_policy_and_its_budget(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1"])
    registry.update("users", retry={"attempts": 5})
    assert lb.retry_policy is not None and lb.retry_policy.attempts == 5
    assert lb.retry_budget is not None
    registry.update("users", retry=False)
    assert lb.retry_policy is None and lb.retry_budget is None


def test_delete_waits_for_in_flight_calls_then_closes(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1"])
    call = lb.pick()
    result: list[bool] = []
    deleter = threading.Thread(target=lambda: result.append(registry.delete("users")))
    deleter.start()
    wait_until(lambda: lb.closed, message="the balancer to refuse new picks")
    assert "users" not in registry
    with pytest.raises(clientlb.NoEndpointAvailable, match="closed"):
        lb.pick()
    assert deleter.is_alive()  # still draining: the call is in flight
    call.done()
    deleter.join(10)
    assert result == [True]


def test_delete_gives_up_waiting_after_the_timeout(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1"])
    call = lb.pick()
    assert registry.delete("users", timeout=0.05) is False
    assert lb.closed
    call.done()
    assert registry.delete("users") is False  # already gone


def test_adelete_drains_without_blocking_the_loop() -> None:
    async def scenario() -> bool:
        reg = Registry(telemetry=False)
        lb = reg.create("users", ["127.0.0.1:1"])
        assert await lb.await_ready()
        call = lb.pick()
        task = asyncio.create_task(reg.adelete("users"))
        await asyncio.sleep(0.05)
        assert not task.done()  # waiting for the call, while the loop runs this coroutine
        call.done()
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(scenario()) is True


def test_concurrent_creates_of_one_name_make_exactly_one_balancer(registry: Registry) -> None:
    results: list[object] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            results.append(registry.create("users", ["127.0.0.1:1"]))
        except ConfigError as exc:
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    made = [r for r in results if isinstance(r, clientlb.LoadBalancer)]
    assert len(made) == 1 and len(results) == 8
    assert registry.get("users") is made[0]


def test_created_balancers_are_instrumented() -> None:
    reader = InMemoryMetricReader()
    telemetry = clientlb.Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    with Registry(telemetry=telemetry) as reg:
        lb = reg.create("users", ["127.0.0.1:1"])
        lb.pick().done()
        data = reader.get_metrics_data()
        assert data is not None
        names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
                 for m in sm.metrics}
        assert "clientlb.requests" in names


def _config(**services: dict[str, object]) -> dict[str, object]:
    return {"telemetry": False, "services": services}


def test_reload_creates_updates_and_deletes_to_match_the_new_configuration() -> None:
    with Registry.from_config(_config(
            users={"target": "127.0.0.1:1", "strategy": "round_robin"},
            orders={"target": "127.0.0.1:2"},
            audit={"target": "127.0.0.1:3"})) as reg:
        users, orders = reg.get("users"), reg.get("orders")
        in_flight = users.pick()
        changes = reg.reload(_config(
            users={"target": "127.0.0.1:1", "strategy": "least_request"},
            orders={"target": "127.0.0.1:2"},
            billing={"target": "127.0.0.1:4"}))
        assert changes == {"created": ["billing"], "updated": ["users"], "deleted": ["audit"]}
        assert reg.get("users") is users and reg.get("orders") is orders  # changed in place
        assert users.strategy.name == "least_request" and users.in_flight() == 1
        assert reg.names() == ["billing", "orders", "users"]
        in_flight.done()
        assert reg.reload(_config(
            users={"target": "127.0.0.1:1", "strategy": "least_request"},
            orders={"target": "127.0.0.1:2"},
            billing={"target": "127.0.0.1:4"})) == {"created": [], "updated": [],
                                                    "deleted": []}


def test_reload_reverts_a_removed_option_to_its_default() -> None:
    with Registry.from_config(_config(users={"target": "127.0.0.1:1",
                                             "strategy": "random"})) as reg:
        reg.reload(_config(users={"target": "127.0.0.1:1"}))
        assert reg.get("users").strategy.name == "peak_ewma"


def test_reload_refuses_a_change_that_cannot_be_live_and_changes_nothing() -> None:
    with Registry.from_config(_config(users={"target": "127.0.0.1:1", "strategy": "random"},
                                      orders={"target": "127.0.0.1:2"})) as reg:
        with pytest.raises(ConfigError, match=r"^services\.orders\.target: cannot change"):
            reg.reload(_config(users={"target": "127.0.0.1:1", "strategy": "round_robin"},
                               orders={"target": "127.0.0.1:9"}))
        with pytest.raises(ConfigError, match=r"^services\.users\.first_resolution_timeout: "):
            reg.reload(_config(users={"target": "127.0.0.1:1", "strategy": "round_robin",
                                      "first_resolution_timeout": 1.0}))
        assert reg.get("users").strategy.name == "random"
        assert reg.names() == ["orders", "users"]


def test_update_changes_health_settings_live(registry: Registry) -> None:
    lb = registry.create("users", ["127.0.0.1:1"], outlier_detection=None)
    registry.update("users", health_check={"kind": "tcp", "interval": 2.0},
                    outlier_detection={"consecutive_failures": 2}, panic_threshold=30)
    health = lb._health
    assert health.health_check == clientlb.HealthCheck(kind="tcp", interval=2.0)
    assert health.outlier_detection is not None
    assert health.outlier_detection.consecutive_failures == 2
    registry.update("users", health_check=False)
    assert lb._health.health_check is None
    with pytest.raises(ConfigError, match=r"^health_check\.interval: must be > 0 seconds"):
        registry.update("users", health_check={"interval": 0})


def test_reload_turns_active_health_checks_on_in_place() -> None:
    with Registry.from_config(_config(users={"target": "127.0.0.1:1"})) as reg:
        lb = reg.get("users")
        changes = reg.reload(_config(users={"target": "127.0.0.1:1",
                                            "health_check": {"kind": "tcp"}}))
        assert changes["updated"] == ["users"]
        assert reg.get("users") is lb
        assert lb._health.health_check == clientlb.HealthCheck(kind="tcp")


def test_reload_undoes_its_new_balancers_when_one_cannot_be_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with Registry.from_config(_config(users={"target": "127.0.0.1:1",
                                             "strategy": "random"})) as reg:
        monkeypatch.delitem(clientlb._resolvers.base.RESOLVERS, "dns")  # a scheme not available
        with pytest.raises(ConfigError, match=r"^services\.search\.target: the dns:// scheme"):
            reg.reload(_config(users={"target": "127.0.0.1:1", "strategy": "round_robin"},
                               orders={"target": "127.0.0.1:2"},
                               search={"target": "dns:///search.internal:80"}))
        assert reg.names() == ["users"]
        assert reg.get("users").strategy.name == "random"
