"""Registry.from_config: TOML/JSON/dict configuration, strict, errors named by dotted path."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

import clientlb
from clientlb import ConfigError, Registry

TOML = """
telemetry = false

[services.users]
target = "static://127.0.0.1:8001,127.0.0.1:8002"
strategy = "round_robin"

[services.orders]
target = ["127.0.0.1:9001", { host = "127.0.0.1", port = 9002, weight = 3, zone = "b" }]
strategy = { name = "ring_hash", points_per_weight = 64 }
"""


def _lb_takes(option: str) -> bool:
    return option in inspect.signature(clientlb.LoadBalancer.__init__).parameters


def test_a_toml_file_builds_one_balancer_per_service(tmp_path: Path) -> None:
    path = tmp_path / "clientlb.toml"
    path.write_text(TOML)
    with Registry.from_config(path) as reg:
        assert reg.names() == ["orders", "users"]
        users, orders = reg.get("users"), reg.get("orders")
        assert users.strategy.name == "round_robin"
        assert [e.address for e in users.endpoints()] == ["127.0.0.1:8001", "127.0.0.1:8002"]
        assert orders.strategy.name == "ring_hash"
        assert orders.strategy == clientlb.RingHash(points_per_weight=64)
        weighted = orders.endpoints()[1]
        assert (weighted.weight, weighted.zone) == (3, "b")


def test_a_json_file_and_a_dict_give_the_same_registry(tmp_path: Path) -> None:
    config = {"telemetry": False,
              "services": {"users": {"target": ["127.0.0.1:1"], "strategy": "least_request"}}}
    path = tmp_path / "clientlb.json"
    path.write_text(json.dumps(config))
    for source in (path, str(path), config):
        with Registry.from_config(source) as reg:
            assert reg.get("users").strategy.name == "least_request"


@pytest.mark.parametrize(("config", "message"), [
    ({"services": {"users": {"target": "127.0.0.1:1", "strategy": "x"}}},
     "services.users.strategy: unknown strategy 'x'; choose one of round_robin, random, "
     "least_request, peak_ewma, ring_hash, maglev"),
    ({"services": {"users": {"target": "127.0.0.1:1", "stratgy": "random"}}},
     "services.users.stratgy: unknown key 'stratgy'; expected one of target, strategy"),
    ({"services": {"users": {"strategy": "random"}}},
     "services.users.target: missing; every service needs a target"),
    ({"service": {}}, "service: unknown key 'service'; expected one of services, telemetry"),
    ({"telemetry": True}, "services: missing"),
    ({"services": {"users": "127.0.0.1:1"}},
     "services.users: must be a table with at least a target, got str '127.0.0.1:1'"),
    ({"services": {"users": {"target": "static://127.0.0.1:0"}}},
     "services.users.target: "),
    ({"services": {"users": {"target": ["127.0.0.1:1", {"host": "127.0.0.1", "port": 0}]}}},
     "services.users.target[1].port: port must be 1..65535, got 0"),
    ({"services": {"users": {"target": ["127.0.0.1:1", {"host": "h", "prot": 1}]}}},
     "services.users.target[1].prot: unknown key 'prot'; expected one of host, port, weight"),
    ({"services": {"users": {"target": "127.0.0.1:1", "strategy": {"name": "maglev",
                                                                   "table_size": 10}}}},
     "services.users.strategy.table_size: table_size must be a prime <= 5000011, got 10"),
    ({"services": {"users": {"target": "127.0.0.1:1", "first_resolution_timeout": -1}}},
     "services.users.first_resolution_timeout: first_resolution_timeout must be a finite "
     "number >= 0 seconds"),
    ({"telemetry": "yes", "services": {}}, "telemetry: must be true or false, got 'yes'"),
])
def test_every_error_names_the_dotted_path(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Registry.from_config(config)
    assert str(info.value).startswith(message), str(info.value)


def test_nothing_is_created_when_a_later_service_is_invalid() -> None:
    config = {"services": {"a": {"target": "127.0.0.1:1"}, "b": {"target": "nope://x"}}}
    with pytest.raises(ConfigError, match=r"^services\.b\.target: "):
        Registry.from_config(config)


@pytest.mark.skipif(not _lb_takes("retry"), reason="needs the retry layer")
def test_the_retry_section_builds_a_retry_policy_with_its_budget() -> None:
    config = {"telemetry": False, "services": {
        "users": {"target": "127.0.0.1:1", "retry": {"attempts": 4, "statuses": [503],
                                                      "budget": {"ratio": 0.5}}},
        "plain": {"target": "127.0.0.1:1", "retry": False}}}
    with Registry.from_config(config) as reg:
        policy = reg.get("users").retry_policy
        assert policy is not None
        assert (policy.attempts, policy.statuses) == (4, frozenset({503}))
        assert policy.budget is not None and policy.budget.ratio == 0.5
        assert reg.get("plain").retry_policy is None


@pytest.mark.skipif(not _lb_takes("retry"), reason="needs the retry layer")
def test_retry_errors_name_the_dotted_path() -> None:
    for retry, message in (
            ({"attempts": 0}, "services.users.retry.attempts: attempts must be an integer >= 1"),
            ({"tries": 2}, "services.users.retry.tries: unknown key 'tries'; expected one of "
                           "attempts"),
            ("3", "services.users.retry: must be a table of RetryPolicy settings, true or false")):
        with pytest.raises(ConfigError) as info:
            Registry.from_config({"services": {"users": {"target": "127.0.0.1:1",
                                                         "retry": retry}}})
        assert str(info.value).startswith(message), str(info.value)


@pytest.mark.skipif(not _lb_takes("health_check"), reason="needs active health checks")
def test_the_health_sections_build_the_health_classes() -> None:
    config = {"telemetry": False, "services": {"users": {
        "target": "127.0.0.1:1",
        "health_check": {"kind": "tcp", "interval": 2.5},
        "outlier_detection": {"consecutive_failures": 3}}}}
    with Registry.from_config(config) as reg:
        health = reg.get("users")._health  # the balancer's health manager
        assert health.health_check == clientlb.HealthCheck(kind="tcp", interval=2.5)
        assert health.outlier_detection is not None
        assert health.outlier_detection.consecutive_failures == 3
    with pytest.raises(ConfigError, match=re.escape(
            "services.users.health_check.interval: must be > 0 seconds, got -1")):
        Registry.from_config({"services": {"users": {
            "target": "127.0.0.1:1", "health_check": {"interval": -1}}}})


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.toml", "services = [", "invalid TOML"),
    ("c.json", "{", "invalid JSON"),
    ("c.yaml", "services: {}", "unsupported file type '.yaml'; use .toml or .json"),
    ("c.json", "[]", "the top level must be a table/object, got list"),
])
def test_unreadable_files_are_config_errors(tmp_path: Path, name: str, content: str,
                                            message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Registry.from_config(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        Registry.from_config(tmp_path / "absent.toml")
