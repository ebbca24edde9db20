"""What the sync and asyncio gRPC channels share: outcomes, names, options, policies.

Status codes → outcomes (the issue's rule, configurable with ``failure_codes=``):

* ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``, ``INTERNAL``
  and ``UNKNOWN`` are the endpoint's failures — the codes gRFC A50 (outlier
  detection) and Envoy's gRPC outlier detection treat as the server's fault;
  every other code (``NOT_FOUND``, ``INVALID_ARGUMENT``...) is an answer about
  the request, so the endpoint counts as healthy.
* ``UNAVAILABLE`` whose details say the connection could not be made
  ("failed to connect to all addresses", as gRPC core words it) is a
  ``CONNECT_FAILURE`` (local origin: the server never saw the call, so it is
  retried on another endpoint at once — gRPC's *transparent retry*, gRFC A6);
  any other ``UNAVAILABLE`` is a ``GATEWAY_FAILURE``; ``DEADLINE_EXCEEDED`` is a
  ``TIMEOUT``; ``CANCELLED`` says nothing about the endpoint.

The logical name (``server_name=`` or the target's service name) is sent as the
``:authority`` (``grpc.default_authority``) and is the name the server
certificate is checked against (``grpc.ssl_target_name_override``), while each
sub-channel connects to one endpoint's IP address.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint
from .._core.errors import ConfigError, NoEndpointAvailable, strict_arguments
from .._core.outcome import Outcome
from .._engine.retry import RetryBudget, RetryPolicy, RetryState
from .._ops.telemetry import record_budget_exhausted, record_retry

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "ChannelConfig",
    "HashKey",
    "Hedging",
    "NoEndpointRpcError",
    "RetryPlan",
    "attempt_wait_for_ready",
    "channel_options",
    "classify",
    "close_on_error",
    "endpoint_target",
    "is_local_origin",
    "logical_name",
    "make_lb",
    "metadata_hash_key",
    "prepare_channel",
    "retry_decision",
    "take_retry",
]

StatusCode = grpc.StatusCode

#: Codes that count as the endpoint's failure (gRFC A50 / Envoy): see the module doc.
DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset({
    StatusCode.UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.INTERNAL,
    StatusCode.UNKNOWN,
})

# gRPC core's wording when no connection could be made (pick_first / round_robin
# in grpcio 1.5x-1.8x). The call never left the client.
_LOCAL_ORIGIN_MARKERS = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "DNS resolution failed",
    "empty address list",
)

_OK = StatusCode.OK
_CANCELLED = StatusCode.CANCELLED
_UNAVAILABLE = StatusCode.UNAVAILABLE
_DEADLINE = StatusCode.DEADLINE_EXCEEDED


def is_local_origin(code: grpc.StatusCode | None, details: str | None) -> bool:
    """True when an ``UNAVAILABLE`` means the call never reached a server."""
    if code is not _UNAVAILABLE or not details:
        return False
    return any(marker in details for marker in _LOCAL_ORIGIN_MARKERS)


def classify(code: grpc.StatusCode | None, details: str | None,
             failure_codes: Collection[grpc.StatusCode]) -> Outcome:
    """The :class:`~clientlb.Outcome` of a call that ended with ``code``."""
    if code is _OK:
        return Outcome.SUCCESS
    if code is None or code is _CANCELLED:
        return Outcome.CANCELLED
    if code not in failure_codes:
        return Outcome.SUCCESS
    if code is _UNAVAILABLE:
        if is_local_origin(code, details):
            return Outcome.CONNECT_FAILURE
        return Outcome.GATEWAY_FAILURE
    if code is _DEADLINE:
        return Outcome.TIMEOUT
    return Outcome.FAILURE


def _check_codes(value: object, field_name: str) -> frozenset[grpc.StatusCode]:
    if isinstance(value, (grpc.StatusCode, str)):
        value = (value,)
    if not isinstance(value, Iterable):
        raise ConfigError(f"must be a collection of grpc.StatusCode, got {value!r}",
                          field=field_name)
    codes: set[grpc.StatusCode] = set()
    for item in value:
        if isinstance(item, str):
            try:
                item = grpc.StatusCode[item.upper()]
            except KeyError:
                raise ConfigError(f"unknown status code {item!r}", field=field_name) from None
        if not isinstance(item, grpc.StatusCode):
            raise ConfigError(f"must be grpc.StatusCode values, got {item!r}", field=field_name)
        if item is _OK:
            raise ConfigError("OK cannot be a failure or retryable code", field=field_name)
        codes.add(item)
    return frozenset(codes)


@strict_arguments
@dataclass(frozen=True)
class Hedging:
    """Hedged unary-unary calls (gRFC A6 "hedging policy"), for idempotent methods only.

    The first attempt goes out at once; while no attempt has answered, another
    one starts on a different endpoint every ``delay`` seconds, up to
    ``max_attempts`` in all; the first answer wins and the others are
    cancelled. An attempt that fails with one of ``non_fatal_codes`` (or the
    channel's ``retryable_codes``, or a connect failure) starts the next hedge
    at once; any other answer (even an error) is final. On a hedged method
    the hedges replace policy retries, as in gRFC A6.

    Defaults: ``max_attempts=2`` (one extra request at most — hedging doubles
    load in the worst case, so it starts small), ``delay=0.05`` s (about a
    LAN p99: hedges only the slow tail), ``non_fatal_codes={UNAVAILABLE}``.
    ``methods`` limits hedging to these full method names
    (``"/pkg.Service/Method"``); ``None`` hedges every unary-unary method of
    the channel, so only use that on a channel whose methods are all idempotent.
    """

    max_attempts: int = 2
    delay: float = 0.05
    non_fatal_codes: frozenset[grpc.StatusCode] = frozenset({StatusCode.UNAVAILABLE})
    methods: frozenset[str] | None = None

    def __post_init__(self) -> None:
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 5:
            raise ConfigError(f"max_attempts must be an integer 2..5 (gRFC A6 caps it at 5), "
                              f"got {n!r}", field="hedging.max_attempts")
        d = self.delay
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            raise ConfigError(f"delay must be a number of seconds >= 0, got {d!r}",
                              field="hedging.delay")
        object.__setattr__(self, "non_fatal_codes",
                           _check_codes(self.non_fatal_codes, "hedging.non_fatal_codes"))
        if self.methods is not None:
            if isinstance(self.methods, str) or not all(
                    isinstance(m, str) and m.startswith("/") for m in self.methods):
                raise ConfigError(f"methods must be full method names like '/pkg.Svc/Method', "
                                  f"got {self.methods!r}", field="hedging.methods")
            object.__setattr__(self, "methods", frozenset(self.methods))

    def applies_to(self, method: str) -> bool:
        return self.methods is None or method in self.methods


@dataclass(frozen=True)
class RetryPlan:
    """How one channel retries unary-unary calls (gRFC A6), resolved at construction.

    * ``transparent_retries``: a call that never reached a server (connect
      failure) goes at once, with no backoff, to an endpoint not yet tried, at
      most this many times (gRPC's transparent retry; default 3, 0 when the
      balancer was built with ``retry=None``).
    * ``retryable_codes`` (gRFC A6 ``retryableStatusCodes``): a call that
      failed with one of them is sent again after the balancer's
      :class:`~clientlb.RetryPolicy` backoff, up to its ``attempts`` (capped
      at 5 as gRFC A6 does). Default none: the server may have run the call.
    * Every retry, transparent or not, is withdrawn from the balancer's
      :class:`~clientlb.RetryBudget` (``lb.retry_budget``), shared with its
      HTTP and TCP traffic, so an outage never becomes a retry storm.
    """

    retryable_codes: frozenset[grpc.StatusCode] = frozenset()
    policy: RetryPolicy | None = None
    transparent_retries: int = 3
    budget: RetryBudget | None = None


def retry_decision(plan: RetryPlan, lb: LoadBalancer, code: grpc.StatusCode | None,
                   details: str | None, transparent: int, state: RetryState | None
                   ) -> tuple[float | None, RetryState | None]:
    """After a failed attempt: ``(-1, state)`` to retry at once (transparent),
    ``(seconds, state)`` to retry after a backoff, ``(None, state)`` to give up."""
    budget = plan.budget
    reason = code.name.lower() if code is not None else "unknown"
    if is_local_origin(code, details):
        if transparent < plan.transparent_retries and len(lb.endpoints()) > 1:
            if budget is None or budget.try_withdraw():
                # the attempt about to start: the first, the transparent and policy retries
                record_retry(lb, attempt=transparent + (state.attempt_number if state else 1)
                             + 1, reason=f"transparent_{reason}")
                return -1.0, state
            record_budget_exhausted(lb)
        return None, state
    if plan.policy is None or code not in plan.retryable_codes:
        return None, state
    if state is None:
        state = plan.policy.start(lb.rng)
    delay = state.next_delay()
    if delay is None:
        return None, state
    if budget is not None and not budget.try_withdraw():
        record_budget_exhausted(lb)
        return None, state
    record_retry(lb, attempt=transparent + state.attempt_number, reason=reason)
    return delay, state


def take_retry(lb: LoadBalancer, budget: RetryBudget | None, *, attempt: int,
               reason: str) -> bool:
    """Withdraw one retry (or hedge) from the budget and note it on the caller's span."""
    if budget is not None and not budget.try_withdraw():
        record_budget_exhausted(lb)
        return False
    record_retry(lb, attempt=attempt, reason=reason)
    return True


def attempt_wait_for_ready(wait_for_ready: bool | None, plan: RetryPlan, lb: LoadBalancer,
                           tried: Collection[str] | None, transparent: int) -> bool | None:
    """``wait_for_ready`` for one attempt.

    With ``wait_for_ready=True`` a grpcio channel queues a call while its
    endpoint cannot connect; behind a balancer that would pin the call to a
    dead endpoint while others are up. gRPC's own balancers only wait when
    *no* endpoint is ready; likewise, an attempt that another endpoint could
    still take goes out without waiting (and fails over transparently), and
    only the last candidate waits.
    """
    if not wait_for_ready or transparent >= plan.transparent_retries:
        return wait_for_ready
    if len(tried or ()) + 1 < len(lb.endpoints()):
        return False
    return wait_for_ready


#: ``hash_key(method, request, metadata)`` → the pick key of ``ring_hash``/``maglev``
#: (``request`` is None for client-streaming calls).
HashKey = Callable[[str, Any, Any], "str | bytes | int | None"]


def metadata_hash_key(name: str) -> HashKey:
    """A ``hash_key`` reading one metadata entry (Envoy's header hash policy)."""
    name = name.lower()

    def key(method: str, request: Any, metadata: Any) -> str | bytes | None:
        for k, v in metadata or ():
            if k == name:
                return v  # type: ignore[no-any-return]
        return None

    return key


@dataclass(frozen=True)
class ChannelConfig:
    """Everything a balanced channel needs beyond its balancer."""

    failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES
    retry: RetryPlan = field(default_factory=RetryPlan)
    hedging: Hedging | None = None
    hash_key: HashKey | None = None


def build_config(lb: LoadBalancer, *, failure_codes: object, retryable_codes: object,
                 max_attempts: int | None, transparent_retries: int | None,
                 hedging: Hedging | None, hash_key: object = None) -> ChannelConfig:
    """Validate the channel's own options (``ConfigError`` names the field)."""
    if isinstance(hash_key, str):
        if not hash_key:
            raise ConfigError("hash_key must be a metadata key or a callable, got ''",
                              field="hash_key")
        hash_key = metadata_hash_key(hash_key)
    elif hash_key is not None and not callable(hash_key):
        raise ConfigError(f"hash_key must be a metadata key (str) or a callable "
                          f"(method, request, metadata) -> key, got {hash_key!r}",
                          field="hash_key")
    codes = _check_codes(failure_codes, "failure_codes")
    retryable = _check_codes(retryable_codes, "retryable_codes")
    if hedging is not None and not isinstance(hedging, Hedging):
        raise ConfigError(f"hedging must be a clientlb.grpc.Hedging or None, got {hedging!r}",
                          field="hedging")
    policy = lb.retry_policy
    t = transparent_retries
    if t is None:
        t = 0 if policy is None else 3
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ConfigError(f"transparent_retries must be an integer >= 0, got {t!r}",
                          field="transparent_retries")
    if retryable and policy is None:
        raise ConfigError("retryable_codes needs a retry policy, but the balancer was built "
                          "with retry=None", field="retryable_codes")
    if max_attempts is not None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
                or not 1 <= max_attempts <= 5:
            raise ConfigError(f"max_attempts must be an integer 1..5 (gRFC A6 caps it at 5), "
                              f"got {max_attempts!r}", field="max_attempts")
        if policy is None:
            raise ConfigError("max_attempts needs a retry policy, but the balancer was built "
                              "with retry=None", field="max_attempts")
        policy = replace(policy, attempts=max_attempts)
    elif policy is not None and policy.attempts > 5:
        policy = replace(policy, attempts=5)  # gRFC A6: maxAttempts above 5 is treated as 5
    plan = RetryPlan(retryable_codes=retryable, policy=policy if retryable else None,
                     transparent_retries=t, budget=lb.retry_budget)
    return ChannelConfig(failure_codes=codes, retry=plan, hedging=hedging,
                         hash_key=hash_key)


def make_lb(lb_or_target: object, lb_options: dict[str, Any]) -> tuple[LoadBalancer, bool]:
    """The balancer to use and whether the channel owns it (and closes it)."""
    if isinstance(lb_or_target, LoadBalancer):
        if lb_options:
            raise ConfigError(
                f"balancer options {sorted(lb_options)} were given with an existing "
                "LoadBalancer; set them on the LoadBalancer instead", field="lb_options")
        return lb_or_target, False
    return LoadBalancer(lb_or_target, **lb_options), True  # type: ignore[arg-type]


def logical_name(lb: LoadBalancer, server_name: str | None) -> str | None:
    """The ``:authority``/TLS name: ``server_name=``, else the target's service name.

    A static target has no service name (unless the balancer was given
    ``name=``): then each sub-channel keeps gRPC's default, the address.
    """
    if server_name is not None:
        if not isinstance(server_name, str) or not server_name:
            raise ConfigError(f"server_name must be a non-empty string, got {server_name!r}",
                              field="server_name")
        return server_name
    target = lb.target
    if target.scheme == "static" and lb.name == "static":
        return None
    if lb.name != target.service:
        return lb.name
    if target.scheme == "dns" and target.port is not None:
        return f"{target.service}:{target.port}"
    return target.service


def channel_options(options: Sequence[tuple[str, Any]] | None, name: str | None
                    ) -> tuple[tuple[str, Any], ...]:
    """The user's channel options plus the authority/TLS-name overrides."""
    if options is None:
        opts: list[tuple[str, Any]] = []
    else:
        try:
            opts = [(str(k), v) for k, v in options]
        except (TypeError, ValueError):
            raise ConfigError(f"options must be a sequence of (key, value) pairs, got "
                              f"{options!r}", field="options") from None
    keys = {k for k, _ in opts}
    if name is not None:
        if "grpc.default_authority" not in keys:
            opts.append(("grpc.default_authority", name))
        if "grpc.ssl_target_name_override" not in keys:
            host = name
            if host.startswith("["):
                host = host[1:host.find("]")]
            elif host.count(":") == 1:
                host = host.rsplit(":", 1)[0]
            opts.append(("grpc.ssl_target_name_override", host))
    return tuple(opts)


@contextmanager
def close_on_error(lb: LoadBalancer, owns: bool) -> Iterator[None]:
    """Close the balancer the channel owns if building the channel fails."""
    try:
        yield
    except BaseException:
        if owns:
            lb.close()
        raise


def prepare_channel(lb_or_target: object, lb_options: dict[str, Any],
                    options: Sequence[tuple[str, Any]] | None, server_name: str | None, *,
                    failure_codes: object, retryable_codes: object, max_attempts: int | None,
                    transparent_retries: int | None, hedging: Hedging | None,
                    hash_key: object) -> tuple[LoadBalancer, bool, ChannelConfig,
                                               tuple[tuple[str, Any], ...]]:
    """What every channel constructor does first: ``(lb, owns_lb, config, options)``.

    Builds (or takes) the balancer, validates the channel's options and adds
    the authority/TLS-name overrides; a balancer built here is closed again
    if anything is invalid.
    """
    lb, owns = make_lb(lb_or_target, lb_options)
    with close_on_error(lb, owns):
        config = build_config(lb, failure_codes=failure_codes, retryable_codes=retryable_codes,
                              max_attempts=max_attempts, transparent_retries=transparent_retries,
                              hedging=hedging, hash_key=hash_key)
        opts = channel_options(options, logical_name(lb, server_name))
    return lb, owns, config, opts


def endpoint_target(endpoint: Endpoint) -> str:
    """The gRPC target of one endpoint: ``ipv4:``/``ipv6:`` for IPs (no resolver)."""
    host = endpoint.host
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"dns:///{endpoint.address}"
    if ip.version == 4:
        return f"ipv4:{endpoint.address}"
    return f"ipv6:{endpoint.address}"


class NoEndpointRpcError(NoEndpointAvailable, grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """No endpoint to send the call to: an ``UNAVAILABLE`` ``grpc.RpcError``.

    It is also a :class:`clientlb.NoEndpointAvailable`, so either ``except``
    catches it; as a ``grpc.Call``/``grpc.Future`` it behaves like gRPC's own
    errors (``code()``, ``details()``, ``result()`` raises it).
    """

    def __init__(self, error: NoEndpointAvailable) -> None:
        super().__init__(error.reason, service=error.service)
        self.__cause__ = error.__cause__ or error

    # grpc.Call / RpcContext
    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def code(self) -> grpc.StatusCode:
        return StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)

    def debug_error_string(self) -> str:
        return f"UNAVAILABLE:{self}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback: Any) -> bool:
        return False

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> BaseException:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Any) -> None:
        fn(self)
