"""Balanced gRPC channels: any clientlb target and strategy, per call, for grpcio.

::

    import clientlb.grpc

    channel = clientlb.grpc.insecure_channel("dns:///users.internal:50051",
                                             strategy="least_request")
    stub = users_pb2_grpc.UsersStub(channel)      # generated stubs work unchanged
    stub.Get(users_pb2.GetRequest(id=7))

The returned object *is* a ``grpc.Channel``: it keeps one grpcio channel per
endpoint and picks an endpoint for every call. Every call, sync or
``clientlb.grpc.aio``, is driven by one policy state machine on the call engine
(``_policy``: retries, hedging and transparent retry as gRFC A6;
docs/architecture.md, "Integrations"); ``_pool`` holds the sub-channels,
``_channel`` and ``aio`` only do the I/O, ``_common`` turns status codes into
outcomes. grpcio is an optional extra: ``pip install clientlb[grpc]``.
"""

from __future__ import annotations

try:
    import grpc
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "clientlb.grpc needs grpcio, an optional extra: pip install clientlb[grpc]"
    ) from _exc

from collections.abc import Collection, Sequence
from typing import Any, Literal

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint
from .._core.errors import strict_arguments
from ._channel import BalancedChannel
from ._common import (
    DEFAULT_FAILURE_CODES,
    HashKey,
    Hedging,
    NoEndpointRpcError,
    check_compression,
    classify,
    endpoint_target,
    prepare_channel,
    server_name_fourth,
)

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "BalancedChannel",
    "HashKey",
    "Hedging",
    "NoEndpointRpcError",
    "aio",
    "classify",
    "insecure_channel",
    "secure_channel",
]


@strict_arguments
def insecure_channel(
    lb_or_target: LoadBalancer | str | Sequence[str | Endpoint],
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    *,
    server_name: str | None = None,
    failure_codes: Collection[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
    retryable_codes: Collection[grpc.StatusCode] = (),
    max_attempts: int | None = None,
    transparent_retries: int | None = None,
    hedging: Hedging | Literal[False] | None = None,
    hash_key: str | HashKey | None = None,
    **lb_options: Any,
) -> BalancedChannel:
    """A plaintext ``grpc.Channel`` that picks an endpoint of ``lb_or_target`` per call.

    Takes ``grpc.insecure_channel``'s arguments in the same places
    (``target, options, compression``), so that replacing one by the other is
    enough; clientlb's own arguments are keyword-only.

    Args:
        lb_or_target: a :class:`~clientlb.LoadBalancer` (shared, not closed
            with the channel) or a target; with a target the channel builds
            its own balancer from ``**lb_options`` (``strategy=``, ``name=``...)
            and closes it with the channel.
        options: grpcio channel options, given to every sub-channel.
        compression: the default compression of every sub-channel.
        server_name: the ``:authority`` to send (default: the target's
            service name; for a static target, each endpoint's address).
        failure_codes: the status codes that count as the endpoint's failure
            (default: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
            INTERNAL, UNKNOWN).
        retryable_codes: codes after which a unary-unary call is sent again on
            another endpoint (gRFC A6 ``retryableStatusCodes``; default none:
            the server may have executed the call — list codes only for
            idempotent methods).
        max_attempts: attempts in all, first included, for ``retryable_codes``
            (gRFC A6, 1..5); default the balancer's ``RetryPolicy.attempts``
            (3), capped at 5. Backoff and budget are the balancer's, read when
            each call starts (``Registry.update(retry=...)`` reaches the channel).
        transparent_retries: how many times a call that never reached a
            server (connect failure) is sent to another endpoint (default 3;
            free of the retry budget; none while the balancer has ``retry=None``).
        hedging: a :class:`~clientlb.Hedging` policy for idempotent unary-unary
            methods (``clientlb.grpc.Hedging`` is the same class); None
            (default): the balancer's ``hedging``, for the gRPC methods its
            ``methods`` names; False: none.
        hash_key: the pick key for ``ring_hash``/``maglev``: a metadata key
            (``"x-user-id"``) or ``callable(method, request, metadata)``
            (``request`` is None for client-streaming calls). Default none:
            hashing strategies then pick at random.

    Raises:
        ConfigError: for a bad target, option or policy.
    """
    compression = check_compression(compression)
    lb, owns, config, opts = prepare_channel(
        lb_or_target, options, server_name=server_name, failure_codes=failure_codes,
        retryable_codes=retryable_codes, max_attempts=max_attempts,
        transparent_retries=transparent_retries, hedging=hedging, hash_key=hash_key,
        **lb_options)

    def factory(endpoint: Endpoint) -> grpc.Channel:
        return grpc.insecure_channel(endpoint_target(endpoint), options=opts,
                                     compression=compression)

    return BalancedChannel(lb, owns_lb=owns, factory=factory, config=config)


@strict_arguments
@server_name_fourth
def secure_channel(
    lb_or_target: LoadBalancer | str | Sequence[str | Endpoint],
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    *,
    server_name: str | None = None,
    failure_codes: Collection[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
    retryable_codes: Collection[grpc.StatusCode] = (),
    max_attempts: int | None = None,
    transparent_retries: int | None = None,
    hedging: Hedging | Literal[False] | None = None,
    hash_key: str | HashKey | None = None,
    **lb_options: Any,
) -> BalancedChannel:
    """A TLS ``grpc.Channel`` that picks an endpoint of ``lb_or_target`` per call.

    Every sub-channel connects to an endpoint's address, while the
    ``:authority`` and the name the server certificate must carry are the
    logical name: ``server_name=``, else the target's service name. A static
    target has no service name: give ``server_name=`` (or ``name=`` to the
    balancer) so that certificates are checked against the service's name.

    The positional arguments are ``grpc.secure_channel``'s (``target,
    credentials, options, compression``); the others are keyword-only, as for
    :func:`insecure_channel`. A server name in the fourth place (where clientlb
    used to take it) still works, with a ``DeprecationWarning``.
    """
    compression = check_compression(compression)
    lb, owns, config, opts = prepare_channel(
        lb_or_target, options, credentials=credentials, server_name=server_name,
        failure_codes=failure_codes, retryable_codes=retryable_codes,
        max_attempts=max_attempts, transparent_retries=transparent_retries, hedging=hedging,
        hash_key=hash_key, **lb_options)

    def factory(endpoint: Endpoint) -> grpc.Channel:
        return grpc.secure_channel(endpoint_target(endpoint), credentials, options=opts,
                                   compression=compression)

    return BalancedChannel(lb, owns_lb=owns, factory=factory, config=config)


# ``import grpc`` makes ``grpc.aio`` reachable; ``import clientlb.grpc`` does the same for
# ``clientlb.grpc.aio`` (imported last: it builds on this package's modules).
from . import aio  # noqa: E402
