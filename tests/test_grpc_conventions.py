"""clientlb.grpc feels like grpcio: same argument positions, ``.aio`` after one import,
gRPC's own target syntax understood or refused with the clientlb form (issue 14)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
import trustme

import clientlb
import clientlb.grpc
import clientlb.grpc.aio
from clientlb import ConfigError, parse_target

from ._grpc_servers import UNARY, GrpcBackend

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional(function: Callable[..., Any]) -> list[str]:
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params if p.kind in _POSITIONAL]


@pytest.mark.parametrize("name", ["insecure_channel", "secure_channel"])
@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_channel_constructors_take_grpcios_positions_and_the_rest_by_keyword(
        name: str, aio: bool) -> None:
    """After the target, the positional parameters are grpcio's, in grpcio's order; every
    clientlb extra (server_name=, hedging=, the balancer's options) is keyword-only."""
    ours = getattr(clientlb.grpc.aio if aio else clientlb.grpc, name)
    theirs = getattr(grpc.aio if aio else grpc, name)
    assert _positional(ours)[1:] == _positional(theirs)[1:]
    keyword_only = [p.name for p in inspect.signature(ours).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not aio:
        assert "server_name" in keyword_only and "hedging" in keyword_only


def _tls_backends() -> tuple[list[GrpcBackend], grpc.ChannelCredentials]:
    ca = trustme.CA()
    cert = ca.issue_cert("users.internal")
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())])
    servers = [GrpcBackend(f"t{i}", credentials=creds) for i in range(2)]
    return servers, grpc.ssl_channel_credentials(ca.cert_pem.bytes())


def test_secure_channel_takes_compression_fourth_as_grpc_does() -> None:
    """``secure_channel(target, credentials, options, compression)`` works positionally, sync
    and aio; a server name in the old fourth place still works, with a DeprecationWarning."""
    servers, creds = _tls_backends()
    addresses = [s.address for s in servers]
    try:
        with clientlb.grpc.secure_channel(addresses, creds, None, grpc.Compression.Gzip,
                                          server_name="users.internal") as channel:
            assert channel.unary_unary(UNARY)(b"x", timeout=5) in {b"t0", b"t1"}
        with pytest.warns(DeprecationWarning, match="server_name="), \
                clientlb.grpc.secure_channel(addresses, creds, None,
                                             "users.internal") as channel:  # type: ignore[arg-type]
            assert channel.unary_unary(UNARY)(b"x", timeout=5) in {b"t0", b"t1"}

        async def main() -> None:
            async with clientlb.grpc.aio.secure_channel(
                    addresses, creds, None, grpc.Compression.Gzip, None,
                    server_name="users.internal") as channel:
                assert await channel.unary_unary(UNARY)(b"x", timeout=5) in {b"t0", b"t1"}
            with pytest.warns(DeprecationWarning, match="server_name="):
                channel = clientlb.grpc.aio.secure_channel(
                    addresses, creds, None, "users.internal")  # type: ignore[arg-type]
            async with channel:
                assert await channel.unary_unary(UNARY)(b"x", timeout=5) in {b"t0", b"t1"}

        import asyncio
        asyncio.run(main())
    finally:
        for s in servers:
            s.stop()


def test_a_bad_compression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"compression must be a grpc\.Compression"):
        clientlb.grpc.insecure_channel(["127.0.0.1:1"], None, 42)  # type: ignore[arg-type]


def test_import_clientlb_grpc_makes_aio_reachable_like_import_grpc() -> None:
    """``import clientlb.grpc`` then ``clientlb.grpc.aio.insecure_channel``, as grpc.aio."""
    code = ("import clientlb.grpc\n"
            "assert callable(clientlb.grpc.aio.insecure_channel)\n"
            "assert callable(clientlb.grpc.aio.secure_channel)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("grpc_target", "clientlb_form"), [
    ("dns:localhost:8080", "dns:///localhost:8080"),
    ("dns:///users.internal:50051", "dns:///users.internal:50051"),
    ("dns://127.0.0.1:53/users.internal:50051", "dns://127.0.0.1:53/users.internal:50051"),
    ("ipv4:127.0.0.1:50051,127.0.0.2:50052", "static://127.0.0.1:50051,127.0.0.2:50052"),
    ("ipv6:[::1]:50051,[::2]:50052", "static://[::1]:50051,[::2]:50052"),
    ("localhost:8080", "static://localhost:8080"),
])
def test_grpc_target_syntax_is_understood(grpc_target: str, clientlb_form: str) -> None:
    """gRPC's naming (grpc/doc/naming.md): ``dns:``, ``ipv4:``, ``ipv6:`` mean what they mean
    to grpcio; a bare ``host:port`` is a static target (one endpoint, resolved at connect)."""
    assert str(parse_target(grpc_target)) == clientlb_form


@pytest.mark.parametrize(("grpc_target", "message"), [
    ("dns:localhost", "gRPC's default port 443 is not assumed: write 'dns:///localhost:443'"),
    ("dns:///localhost", "gRPC's default port 443 is not assumed: write "
                         "'dns:///localhost:443'"),
    ("ipv4:127.0.0.1", "gRPC's default port 443 is not assumed: write "
                       "'static://127.0.0.1:443'"),
    ("ipv4:[::1]:80", "'[::1]:80' is not an IPv4 address: write 'static://[::1]:80'"),
    ("ipv6:::1", "write IPv6 addresses in brackets with a port: 'static://[::1]:443'"),
    ("unix:/tmp/grpc.sock", "gRPC's unix: targets are not supported: clientlb balances "
                            "host:port endpoints"),
    ("unix:///tmp/grpc.sock", "gRPC's unix: targets are not supported"),
    ("xds:///users", "unknown scheme 'xds'"),
])
def test_grpc_target_syntax_clientlb_cannot_follow_is_refused_with_the_clientlb_form(
        grpc_target: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(grpc_target)
    assert message in str(info.value)


def test_a_grpc_style_target_works_for_a_channel() -> None:
    """``ipv4:`` straight into clientlb.grpc.insecure_channel, as into grpc.insecure_channel."""
    backends = [GrpcBackend(f"b{i}") for i in range(2)]
    try:
        target = "ipv4:" + ",".join(b.address for b in backends)
        with clientlb.grpc.insecure_channel(target, strategy="round_robin") as channel:
            answers = {channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(4)}
        assert answers == {b"b0", b"b1"}
    finally:
        for b in backends:
            b.stop()
