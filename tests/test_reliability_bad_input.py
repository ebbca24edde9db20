"""Bad input is a ConfigError, whatever the argument, and a failed constructor leaves
nothing running (issue 13).

DESIGN.md: "Bad input gets a clear ConfigError at construction, not a stack
trace at the first request". A hypothesis test feeds every public
constructor (and the functions that build balancers) one wrong argument at a
time — wrong types, NaN, infinities, negatives, huge numbers, empty strings,
unknown keywords — on top of arguments that are valid. Each call either
succeeds (the value happened to be acceptable) or raises ``ConfigError`` (a
``ValueError``) whose message names the argument; nothing else. After each
call, whatever it built is closed, and no ``clientlb-*`` thread it started and
no resolver task remains.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

import clientlb

from ._helpers import free_port, resolver_tasks, wait_until

DEAD = f"127.0.0.1:{free_port()}"  # nothing listens: discovery and connects fail fast


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


BAD_VALUES = st.one_of(
    st.sampled_from([
        None, True, False, 0, -1, 1, 3, 65536, 2**64, -(2**63), 0.5, -0.5, 1e300,
        math.nan, math.inf, -math.inf, "", "x", "A", "0", "-1", "nan", "/", "a:b",
        b"x", [], {}, (), [1], ["x"], {"a": 1}, {"": None}, frozenset({1}), _Odd(),
        lambda: None, lambda *a: "x", 1j, random.Random(1), object,
    ]),
    st.integers(min_value=-10, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)

# -- what is built, from valid arguments ---------------------------------------------------

STATIC = f"static://{DEAD}"
CONSUL = f"consul://{DEAD}/svc"
DNS = f"dns://{DEAD}/svc.test:80"
ETCD = f"etcd://{DEAD}/svc"


def _lb(target: str) -> Callable[..., Any]:
    def build(**kw: Any) -> Any:
        return clientlb.LoadBalancer(kw.pop("target", target),
                                     **{"first_resolution_timeout": 0, **kw})
    return build


def _with_resolver_option(target: str) -> Callable[..., Any]:
    def build(**kw: Any) -> Any:
        return clientlb.LoadBalancer(target, first_resolution_timeout=0, resolver_options=kw)
    return build


def _transport(cls: type) -> Callable[..., Any]:
    def build(**kw: Any) -> Any:
        target = kw.pop("lb", CONSUL)  # a balancer with a running resolver, if it leaked
        return cls(target, **kw)
    return build


def _grpc(kind: str) -> Callable[..., Any]:
    grpc_mod = pytest.importorskip("grpc")
    import clientlb.grpc

    def build(**kw: Any) -> Any:
        target = kw.pop("lb_or_target", CONSUL)
        if kind == "secure":
            creds = kw.pop("credentials", grpc_mod.local_channel_credentials())
            return clientlb.grpc.secure_channel(target, creds, **kw)
        return clientlb.grpc.insecure_channel(target, **kw)
    return build


def _from_config(**kw: Any) -> Any:
    service = {"target": STATIC, **kw}
    return clientlb.Registry.from_config({"services": {"svc": service}}, telemetry=False)


# connect/open_connection validate their arguments before the first pick; a closed
# balancer then ends a valid call at once, without a socket (this test is about input)
def _connect(**kw: Any) -> Any:
    lb = clientlb.LoadBalancer(STATIC, retry=None)
    lb.close()
    with pytest.raises((clientlb.NoEndpointAvailable, clientlb.ConnectError)):
        clientlb.connect(lb, **kw)


def _open_connection(**kw: Any) -> Any:
    async def scenario() -> None:
        lb = clientlb.LoadBalancer(STATIC, retry=None)
        await lb.aclose()
        with pytest.raises((clientlb.NoEndpointAvailable, clientlb.ConnectError)):
            await clientlb.open_connection(lb, **kw)
    asyncio.run(scenario())


LB_ARGS = ["strategy", "name", "first_resolution_timeout", "clock", "rng", "resolver_options",
           "health_check", "outlier_detection", "panic_threshold", "slow_start", "local_zone",
           "overprovisioning_factor", "max_requests", "max_requests_per_endpoint", "retry",
           "hedging"]
LOOP_OPTIONS = ["rng", "clock", "backoff_initial", "backoff_multiplier", "backoff_maximum",
                "backoff_jitter", "min_refresh_interval"]
TTL_OPTIONS = [*LOOP_OPTIONS, "min_ttl", "max_ttl", "ttl_jitter", "timeout", "record_types",
               "tcp"]
HTTP_OPTIONS = ["lb", "server_name", "hash_key", "affinity", "pool_shards", "verify", "cert",
                "trust_env", "http1", "http2", "limits", "local_address", "retries",
                "socket_options", "hedging"]
GRPC_OPTIONS = ["lb_or_target", "options", "compression", "server_name", "failure_codes",
                "retryable_codes", "max_attempts", "transparent_retries", "hedging",
                "hash_key", "strategy", "retry"]

#: name -> (builder, the arguments it takes)
CONSTRUCTORS: dict[str, tuple[Callable[..., Any], list[str]]] = {
    "LoadBalancer(static)": (_lb(STATIC), ["target", *LB_ARGS]),
    "LoadBalancer(consul)": (_lb(CONSUL), LB_ARGS),
    "consul resolver_options": (_with_resolver_option(CONSUL), [
        *LOOP_OPTIONS, "token", "wait", "min_query_interval", "timeout", "consistency",
        "ssl_context", "env"]),
    "dns resolver_options": (_with_resolver_option(DNS), TTL_OPTIONS),
    "etcd resolver_options": (_with_resolver_option(ETCD), [
        *LOOP_OPTIONS, "username", "password", "tls", "ssl_context", "timeout",
        "resync_interval", "env", "transport"]),
    "HealthCheck": (clientlb.HealthCheck, [
        "kind", "path", "expected_statuses", "host", "tls", "port", "grpc_service", "interval",
        "timeout", "jitter", "healthy_threshold", "unhealthy_threshold", "no_traffic_interval",
        "initial_health", "max_concurrency"]),
    "OutlierDetection": (clientlb.OutlierDetection, [
        "consecutive_failures", "consecutive_gateway_failures",
        "consecutive_local_origin_failures", "split_local_origin_errors", "interval",
        "base_ejection_time", "max_ejection_time", "max_ejection_percent", "always_eject_one",
        "enforcing_consecutive_failures", "enforcing_consecutive_gateway_failures",
        "enforcing_consecutive_local_origin_failures", "success_rate", "failure_percentage",
        "uneject_on_health_check"]),
    "SuccessRate": (clientlb.SuccessRate, ["stdev_factor", "minimum_hosts", "request_volume",
                                           "enforcing", "minimum_gap"]),
    "FailurePercentage": (clientlb.FailurePercentage,
                          ["threshold", "minimum_hosts", "request_volume", "enforcing"]),
    "SlowStart": (clientlb.SlowStart, ["window", "aggression", "min_weight_percent"]),
    "RetryPolicy": (clientlb.RetryPolicy, ["attempts", "backoff", "max_backoff", "budget",
                                           "retry_after_cap", "statuses", "methods"]),
    "RetryBudget": (clientlb.RetryBudget, ["ratio", "min_retries_per_second", "ttl", "clock"]),
    "Hedging": (clientlb.Hedging, ["delay", "max_attempts", "max_extra_load", "methods",
                                   "non_fatal_codes"]),
    "Endpoint": (lambda **kw: clientlb.Endpoint(**{"host": "10.0.0.1", "port": 80, **kw}),
                 ["host", "port", "weight", "priority", "zone", "metadata"]),
    "PeakEwma": (clientlb.PeakEwma, ["decay", "default_rtt", "error_penalty"]),
    "RingHash": (clientlb.RingHash, ["points_per_weight", "max_ring_size"]),
    "Maglev": (clientlb.Maglev, ["table_size"]),
    "CookieAffinity": (clientlb.CookieAffinity, ["name", "secret", "max_age", "path",
                                                 "http_only", "same_site", "secure"]),
    "Registry": (clientlb.Registry, ["telemetry", "defaults"]),
    "Registry.from_config": (_from_config, ["target", *[a for a in LB_ARGS if a not in (
        "name", "clock", "rng")]]),
    "HTTPTransport": (_transport(clientlb.HTTPTransport), HTTP_OPTIONS),
    "AsyncHTTPTransport": (_transport(clientlb.AsyncHTTPTransport), HTTP_OPTIONS),
    "connect": (_connect, ["timeout", "ssl_context", "server_hostname", "attempts", "deadline",
                           "source_address"]),
    "open_connection": (_open_connection, ["ssl", "server_hostname", "timeout", "attempts",
                                           "deadline", "limit"]),
}
GRPC_CONSTRUCTORS = {
    "grpc.insecure_channel": ("insecure", GRPC_OPTIONS),
    "grpc.secure_channel": ("secure", [*GRPC_OPTIONS, "credentials"]),
}


# -- what must be left running: nothing -----------------------------------------------------


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate()
            if t.name.startswith("clientlb-") and t.name != "clientlb-discovery"}


@pytest.fixture(autouse=True)
def _nothing_left_running() -> Iterator[None]:
    before = _threads()
    yield
    wait_until(lambda: not (_threads() - before) and not resolver_tasks(), timeout=10,
               message="every clientlb thread and resolver task to end")


def _close(obj: Any) -> None:
    if isinstance(obj, clientlb.AsyncHTTPTransport):
        asyncio.run(obj.aclose())
    elif hasattr(obj, "close"):
        obj.close()


#: an argument the message may name by what it is (a target)
ALIASES = {"lb": ("lb", "target"), "lb_or_target": ("lb", "target"),
           "ssl": ("ssl", "TLS")}


def _check(name: str, build: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    before = _threads()
    try:
        with warnings.catch_warnings():  # httpx's own deprecations of cert= and verify=<str>
            warnings.filterwarnings("ignore", r"`(cert|verify)=", DeprecationWarning)
            obj = build(**kwargs)
    except clientlb.ConfigError as exc:
        assert isinstance(exc, ValueError)
        (key,) = kwargs
        names = ALIASES.get(key, (key,))
        assert any(n in str(exc) for n in names), \
            f"{name}: the message does not name {key!r}: {exc}"
    except Exception as exc:  # anything else is the bug this test is about
        raise AssertionError(f"{name}({kwargs!r}) raised {type(exc).__name__}: {exc}") from exc
    else:
        _close(obj)
    wait_until(lambda: not (_threads() - before) and not resolver_tasks(), timeout=10,
               message=f"{name}({kwargs!r}) to leave nothing running")


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bad_argument_is_a_config_error_and_nothing_is_left_running(
        name: str, data: st.DataObject) -> None:
    """One wrong argument (or an unknown keyword): ConfigError naming it, or success."""
    build, args = CONSTRUCTORS[name]
    key = data.draw(st.sampled_from([*args, "bogus_option"]), label="argument")
    value = data.draw(BAD_VALUES, label="value")
    _check(name, build, {key: value})


@pytest.mark.parametrize("name", list(GRPC_CONSTRUCTORS))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_grpc_channels_take_bad_arguments_as_config_errors(
        name: str, data: st.DataObject) -> None:
    """clientlb.grpc.insecure_channel / secure_channel, unknown keywords included."""
    kind, args = GRPC_CONSTRUCTORS[name]
    build = _grpc(kind)
    key = data.draw(st.sampled_from([*args, "bogus_option"]), label="argument")
    value = data.draw(BAD_VALUES, label="value")
    _check(name, build, {key: value})


# -- the cases of the issue, by name --------------------------------------------------------


@pytest.mark.parametrize(("build", "field"), [
    (lambda: clientlb.LoadBalancer(STATIC, resolver_options={"timeout": 1}), "resolver_options"),
    (lambda: clientlb.LoadBalancer(STATIC, clock=65536), "clock"),
    (lambda: clientlb.LoadBalancer(STATIC, resolver_options="x"), "resolver_options"),
    (lambda: clientlb.LoadBalancer(CONSUL, resolver_options={"env": "A"}), "env"),
    (lambda: clientlb.LoadBalancer(STATIC, first_resolution_timeout=math.nan),
     "first_resolution_timeout"),
    (lambda: clientlb.OutlierDetection(always_eject_one=math.nan), "always_eject_one"),
    (lambda: clientlb.HTTPTransport(STATIC, verify="/no/such/ca.pem"), "verify"),
    (lambda: clientlb.HTTPTransport(STATIC, cert=3), "cert"),
    (lambda: clientlb.HTTPTransport(STATIC, verify=3), "verify"),
    (lambda: clientlb.LoadBalancer(STATIC, bogus=1), "bogus"),
    (lambda: clientlb.HealthCheck(bogus=1), "bogus"),
])
def test_the_cases_reported_in_the_issue_are_config_errors(build: Callable[[], Any],
                                                           field: str) -> None:
    """Each of the reported TypeError/AttributeError/FileNotFoundError cases."""
    with pytest.raises(clientlb.ConfigError, match=field):
        build()


def test_grpc_unknown_keyword_is_a_config_error_like_httptransport() -> None:
    """insecure_channel(bogus=1) used to be a bare TypeError (HTTPTransport said ConfigError)."""
    pytest.importorskip("grpc")
    import clientlb.grpc

    with pytest.raises(clientlb.ConfigError, match="bogus"):
        clientlb.grpc.insecure_channel(STATIC, bogus=1)
    with pytest.raises(clientlb.ConfigError, match="bogus"):
        clientlb.HTTPTransport(STATIC, bogus=1)


def test_a_clock_that_returns_no_number_is_refused() -> None:
    with pytest.raises(clientlb.ConfigError, match="clock"):
        clientlb.LoadBalancer(STATIC, clock=lambda: "now")


def test_httptransport_with_ssl_context_still_works() -> None:
    """The validation of verify= does not refuse what httpx accepts."""
    ctx = ssl.create_default_context()
    for verify in (True, False, ctx):
        _close(clientlb.HTTPTransport(STATIC, verify=verify))
    _close(clientlb.HTTPTransport(STATIC, limits=httpx.Limits(max_connections=5)))
