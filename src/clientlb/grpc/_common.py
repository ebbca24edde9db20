"""What the sync and asyncio gRPC channels share: outcomes, names, options.

The shells classify their own errors into outcomes (docs/architecture.md,
"Integrations"). Status codes → outcomes (configurable with ``failure_codes=``):

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

import functools
import ipaddress
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal, TypeVar

import grpc

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint
from .._core.errors import ConfigError, NoEndpointAvailable
from .._core.outcome import Outcome
from .._engine.hedging import Hedging
from .._engine.hedging import resolve as resolve_hedging
from .._engine.naming import LogicalName, override_name
from .._engine.naming import logical_name as balancer_name
from .._engine.retry import RetryPolicy

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "ChannelConfig",
    "HashKey",
    "Hedging",
    "NoEndpointRpcError",
    "channel_options",
    "check_compression",
    "classify",
    "close_on_error",
    "endpoint_target",
    "is_local_origin",
    "logical_name",
    "make_lb",
    "metadata_hash_key",
    "prepare_channel",
    "server_name_fourth",
]

StatusCode = grpc.StatusCode
_F = TypeVar("_F", bound=Callable[..., Any])

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

# A sub-channel is one address: grpcio's reconnect backoff (up to 120 s) would keep an
# endpoint that came back unusable long after the balancer's probe (backoff up to 1 s,
# clientlb._engine.connectivity) saw it return. Unless the caller set it, cap it too.
_MAX_BACKOFF_OPTION = "grpc.max_reconnect_backoff_ms"
_MAX_BACKOFF_MS = 1000

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


class ChannelConfig:
    """A channel's own options, validated once; the retry policy and budget are not here.

    They are the balancer's, read when each call starts (``LogicalCall``), so
    ``Registry.update(name, retry=...)`` reaches channels built before it; the
    channel's ``max_attempts=`` (and gRFC A6's cap of 5 attempts) is applied on top of
    the live policy by :meth:`policy`, which derives it again only when the balancer's
    policy object changes.
    """

    __slots__ = ("failure_codes", "hash_key", "hedging", "max_attempts", "max_unreached",
                 "policy_cache", "retryable_codes")

    def __init__(self, *, failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
                 retryable_codes: frozenset[grpc.StatusCode] = frozenset(),
                 max_attempts: int | None = None, max_unreached: int = 3,
                 hedging: Hedging | None = None, hash_key: HashKey | None = None) -> None:
        self.failure_codes = failure_codes
        self.retryable_codes = retryable_codes
        self.max_attempts = max_attempts
        self.max_unreached = max_unreached
        #: a Hedging, None (off), or LIVE_HEDGING: the balancer's, for the gRPC
        #: methods its ``methods`` names (``RpcCall`` reads it at each call)
        self.hedging = hedging
        self.hash_key = hash_key
        #: ``(the balancer's policy, the policy derived from it)``, see :meth:`policy`
        self.policy_cache: tuple[object, RetryPolicy | None] = (None, None)

    def policy(self, lb: LoadBalancer) -> RetryPolicy | None:
        """The balancer's current policy with this channel's ``max_attempts`` on top."""
        live = lb.retry_policy
        source, derived = self.policy_cache
        if source is live:
            return derived
        derived = live
        if live is not None:
            attempts = self.max_attempts or min(live.attempts, 5)  # gRFC A6 caps at 5
            if attempts != live.attempts:
                derived = replace(live, attempts=attempts)
        self.policy_cache = (live, derived)
        return derived


def build_config(lb: LoadBalancer, *, failure_codes: object, retryable_codes: object,
                 max_attempts: int | None, transparent_retries: int | None,
                 hedging: Hedging | Literal[False] | None, hash_key: object = None
                 ) -> ChannelConfig:
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
    policy = resolve_hedging(hedging)
    t = 3 if transparent_retries is None else transparent_retries
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ConfigError(f"transparent_retries must be an integer >= 0, got {t!r}",
                          field="transparent_retries")
    no_policy = "needs a retry policy, but the balancer was built with retry=None"
    if retryable and lb.retry_policy is None:
        raise ConfigError(f"retryable_codes {no_policy}", field="retryable_codes")
    if max_attempts is not None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
                or not 1 <= max_attempts <= 5:
            raise ConfigError(f"max_attempts must be an integer 1..5 (gRFC A6 caps it at 5), "
                              f"got {max_attempts!r}", field="max_attempts")
        if lb.retry_policy is None:
            raise ConfigError(f"max_attempts {no_policy}", field="max_attempts")
    return ChannelConfig(failure_codes=codes, retryable_codes=retryable,
                         max_attempts=max_attempts, max_unreached=t, hedging=policy,
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


def logical_name(lb: LoadBalancer, server_name: str | None) -> LogicalName | None:
    """The ``:authority``/TLS name: ``server_name=``, else the balancer's logical name
    (``clientlb._engine.naming``); None keeps gRPC's default, the endpoint's address."""
    if server_name is not None:
        return override_name(server_name, "server_name")
    return balancer_name(lb)


def channel_options(options: Sequence[tuple[str, Any]] | None, name: LogicalName | None
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
            opts.append(("grpc.default_authority", name.authority))
        if "grpc.ssl_target_name_override" not in keys:
            opts.append(("grpc.ssl_target_name_override", name.host))
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


def prepare_channel(lb_or_target: object, options: Sequence[tuple[str, Any]] | None, *,
                    credentials: object = None, server_name: str | None = None,
                    failure_codes: object = DEFAULT_FAILURE_CODES, retryable_codes: object = (),
                    max_attempts: int | None = None, transparent_retries: int | None = None,
                    hedging: Hedging | Literal[False] | None = None, hash_key: object = None,
                    **lb_options: Any) -> tuple[LoadBalancer, bool, ChannelConfig,
                                                tuple[tuple[str, Any], ...]]:
    """What every channel constructor (sync and aio) does first, with its keyword
    arguments (documented at :func:`clientlb.grpc.insecure_channel`):
    ``(lb, owns_lb, config, options)``.

    Builds (or takes) the balancer, validates the channel's options and adds
    the authority/TLS-name overrides and a 1 s cap on grpcio's reconnect backoff
    (unless given); a balancer built here is closed again if anything is invalid.
    """
    if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
        raise ConfigError(f"credentials must be grpc.ChannelCredentials, got {credentials!r}",
                          field="credentials")
    lb, owns = make_lb(lb_or_target, lb_options)
    with close_on_error(lb, owns):
        config = build_config(lb, failure_codes=failure_codes, retryable_codes=retryable_codes,
                              max_attempts=max_attempts, transparent_retries=transparent_retries,
                              hedging=hedging, hash_key=hash_key)
        opts = channel_options(options, logical_name(lb, server_name))
    if not any(key == _MAX_BACKOFF_OPTION for key, _ in opts):
        opts += ((_MAX_BACKOFF_OPTION, _MAX_BACKOFF_MS),)
    return lb, owns, config, opts


def server_name_fourth(function: _F) -> _F:
    """Let ``secure_channel`` keep working with a server name as its fourth argument.

    The fourth positional argument is ``compression``, as in
    ``grpc.secure_channel(target, credentials, options, compression)``; clientlb used
    to take ``server_name`` there. A string in that place (a string is never a
    ``grpc.Compression``) is still read as the server name, with a
    :class:`DeprecationWarning`; by keyword, ``compression=`` is only a compression.
    """
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) >= 4 and isinstance(args[3], str):
            if kwargs.get("server_name") is not None:
                raise ConfigError("server_name given twice: by keyword and in the place of "
                                  "compression", field="server_name")
            warnings.warn("a server name as the fourth argument of secure_channel() is "
                          "deprecated: that place is compression, as in "
                          "grpc.secure_channel(); pass server_name= by keyword",
                          DeprecationWarning, stacklevel=3)
            kwargs["server_name"] = args[3]
            args = (*args[:3], None, *args[4:])
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_compression(compression: object) -> grpc.Compression | None:
    if compression is not None and not isinstance(compression, grpc.Compression):
        raise ConfigError(f"compression must be a grpc.Compression or None, got "
                          f"{compression!r}", field="compression")
    return compression


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
