"""clientlb.grpc: balanced grpcio channels against real grpcio servers on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

import clientlb
import clientlb.grpc

from ._grpc_servers import SSTREAM, SUNARY, UNARY, USTREAM, GrpcBackend, ProcessBackend, outcomes_of
from ._helpers import free_port, wait_until


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_request", "peak_ewma"])
def test_calls_spread_over_every_endpoint_per_strategy(backends: list[GrpcBackend],
                                                       strategy: str) -> None:
    """Each call picks an endpoint: every backend serves calls, exactly evenly for round_robin
    once every sub-channel is connected (before that, a pick may skip one still connecting
    on a loaded machine, which restarts the cycle)."""
    with clientlb.LoadBalancer([b.address for b in backends], strategy=strategy) as lb, \
            clientlb.grpc.insecure_channel(lb) as channel:
        assert isinstance(channel, grpc.Channel)
        call = channel.unary_unary(UNARY)
        answers: Counter[bytes] = Counter()

        def connected() -> bool:
            answers[call(b"x", timeout=5)] += 1
            return all(e.connectivity == "ready" for e in lb.snapshot().endpoints)

        wait_until(connected)
        counted = Counter(call(b"x", timeout=5) for _ in range(60))
    assert set(answers + counted) == {b"b0", b"b1", b"b2"}
    if strategy == "round_robin":
        assert set(counted.values()) == {20}


@pytest.mark.parametrize("strategy", ["ring_hash", "maglev"])
def test_hash_key_from_metadata_sends_a_key_to_the_same_endpoint(
        backends: list[GrpcBackend], strategy: str) -> None:
    """hash_key="x-user" feeds consistent hashing: one user, one backend; many users, all."""
    with clientlb.grpc.insecure_channel([b.address for b in backends], strategy=strategy,
                                        hash_key="x-user") as channel:
        call = channel.unary_unary(UNARY)
        by_user = {u: call(b"x", timeout=5, metadata=(("x-user", f"user-{u}"),))
                   for u in range(60)}
        assert set(by_user.values()) == {b"b0", b"b1", b"b2"}
        for u in range(0, 60, 7):
            assert call(b"x", timeout=5, metadata=(("x-user", f"user-{u}"),)) == by_user[u]
            parts = list(channel.unary_stream(USTREAM)(
                b"x", timeout=5, metadata=(("x-user", f"user-{u}"),)))
            assert parts[0].split(b":")[0] == by_user[u]
    with pytest.raises(clientlb.ConfigError, match="hash_key"):
        clientlb.grpc.insecure_channel(["127.0.0.1:1"], hash_key=42)  # type: ignore[arg-type]


def test_a_shared_balancer_is_used_and_left_open(
        backends: list[GrpcBackend]) -> None:
    """A shared LoadBalancer can be handed to the channel; the channel does not close it."""
    lb = clientlb.LoadBalancer([b.address for b in backends], strategy="round_robin")
    channel = clientlb.grpc.insecure_channel(lb)
    channel.unary_unary(UNARY)(b"x", timeout=5)
    channel.close()
    assert not lb.closed
    lb.close()


def test_all_four_call_shapes_and_call_options_pass_through(
        backends: list[GrpcBackend]) -> None:
    """unary/stream shapes, with_call, future, metadata, compression, wait_for_ready work."""
    with clientlb.grpc.insecure_channel([b.address for b in backends],
                                        strategy="round_robin") as channel:
        unary = channel.unary_unary(UNARY)
        response, call = unary.with_call(b"x", timeout=5, metadata=(("k", "v"),),
                                         compression=grpc.Compression.Gzip,
                                         wait_for_ready=True)
        assert response in {b"b0", b"b1", b"b2"}
        assert call.code() is grpc.StatusCode.OK
        assert dict(call.trailing_metadata())["backend"] == response.decode()
        assert any(b.metadata.get("k") == "v" for b in backends)
        assert unary.future(b"x", timeout=5).result() in {b"b0", b"b1", b"b2"}

        parts = list(channel.unary_stream(USTREAM)(b"x", timeout=5))
        assert len(parts) == 3 and len({p.split(b":")[0] for p in parts}) == 1
        assert channel.stream_unary(SUNARY)(iter([b"a", b"b"]), timeout=5).endswith(b":2")
        result, scall = channel.stream_unary(SUNARY).with_call(iter([b"a"]), timeout=5)
        assert result.endswith(b":1") and scall.code() is grpc.StatusCode.OK
        assert channel.stream_unary(SUNARY).future(iter([b"a"]), timeout=5).result()
        echoed = list(channel.stream_stream(SSTREAM)(iter([b"p", b"q"]), timeout=5))
        assert [e.split(b"@")[0] for e in echoed] == [b"p", b"q"]
        assert channel.lb.snapshot().endpoints[0].in_flight == 0


def test_generated_stubs_work_unchanged(backends: list[GrpcBackend]) -> None:
    """A protoc-generated stub (grpc.health.v1) takes a balanced channel like any channel."""
    with clientlb.grpc.insecure_channel([b.address for b in backends]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_deadline_exceeded_is_a_timeout_outcome_and_status_codes_map(
        backends: list[GrpcBackend]) -> None:
    """DEADLINE_EXCEEDED → TIMEOUT, INTERNAL → FAILURE, NOT_FOUND → success (request's fault)."""
    backends[0].delay = 0.5
    backends[1].status = grpc.StatusCode.INTERNAL
    backends[2].status = grpc.StatusCode.NOT_FOUND
    with clientlb.grpc.insecure_channel([b.address for b in backends],
                                        strategy="round_robin") as channel:
        seen = outcomes_of(channel.lb)
        codes = []
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(UNARY)(b"x", timeout=0.2)
            codes.append(info.value.code())
    by_address = dict(seen)
    assert by_address[backends[0].address] is clientlb.Outcome.TIMEOUT
    assert by_address[backends[1].address] is clientlb.Outcome.FAILURE
    assert by_address[backends[2].address] is clientlb.Outcome.SUCCESS
    assert sorted(c.name for c in codes) == ["DEADLINE_EXCEEDED", "INTERNAL", "NOT_FOUND"]


def test_failure_codes_are_configurable(backends: list[GrpcBackend]) -> None:
    """failure_codes= decides which codes count against the endpoint."""
    backends[0].status = grpc.StatusCode.PERMISSION_DENIED
    with clientlb.grpc.insecure_channel(
            [backends[0].address],
            failure_codes={grpc.StatusCode.PERMISSION_DENIED}) as channel:
        seen = outcomes_of(channel.lb)
        with pytest.raises(grpc.RpcError):
            channel.unary_unary(UNARY)(b"x", timeout=5)
    assert seen == [(backends[0].address, clientlb.Outcome.FAILURE)]


def test_streams_stay_in_flight_until_they_end(backends: list[GrpcBackend]) -> None:
    """A server-streaming call counts as in flight (least_request) until its last message."""
    for b in backends:
        b.hold = threading.Event()
    with clientlb.grpc.insecure_channel([b.address for b in backends]) as channel:
        stream = channel.unary_stream(USTREAM)(b"x", timeout=10)
        first = next(stream)
        owner = next(b for b in backends if first.startswith(b.name.encode()))
        row = channel.lb.snapshot().by_address()[owner.address]
        assert row.in_flight == 1
        owner.hold.set()  # type: ignore[union-attr]
        assert len(list(stream)) == 2
        wait_until(lambda: channel.lb.snapshot().by_address()[owner.address].in_flight == 0,
                   timeout=5, message="stream released")


def test_connect_failures_are_retried_transparently_on_another_endpoint(
        backends: list[GrpcBackend]) -> None:
    """A dead port in the target never surfaces: the call goes to another endpoint at once."""
    dead = f"127.0.0.1:{free_port()}"
    with clientlb.grpc.insecure_channel([dead, *(b.address for b in backends)],
                                        strategy="round_robin",
                                        outlier_detection=None) as channel:  # keep it picked
        seen = outcomes_of(channel.lb)
        call = channel.unary_unary(UNARY)
        answers = [call(b"x", timeout=5) for _ in range(20)]
        answers += [call.with_call(b"x", timeout=5)[0] for _ in range(4)]
        answers += [call.future(b"x", timeout=5).result() for _ in range(4)]
        # wait_for_ready must not pin a call to the dead endpoint while others are up
        answers += [call(b"x", timeout=2, wait_for_ready=True) for _ in range(4)]
        answers += [call.future(b"x", timeout=2, wait_for_ready=True).result()
                    for _ in range(4)]
        # a server-streaming call is replayed too, as long as nothing came back
        stream = channel.unary_stream(USTREAM)
        for _ in range(4):
            parts = list(stream(b"x", timeout=5))
            assert len(parts) == 3
            answers.append(parts[0].split(b":")[0])
    assert len(answers) == 40
    assert all(a in {b"b0", b"b1", b"b2"} for a in answers)
    dead_outcomes = {o for a, o in seen if a == dead}
    assert dead_outcomes == {clientlb.Outcome.CONNECT_FAILURE}


def test_server_killed_mid_run_fails_no_unary_call() -> None:
    """Sequential calls while a server process is killed (SIGKILL): zero failed calls.

    Connect failures are retried transparently; a call cut while the server
    died (UNAVAILABLE after it was sent) is retried because the caller said
    UNAVAILABLE is retryable for this idempotent method.
    """
    procs = [ProcessBackend(f"p{i}") for i in range(3)]
    errors: list[BaseException] = []
    done = threading.Event()
    count = [0]
    try:
        with clientlb.grpc.insecure_channel(
                [p.address for p in procs], strategy="round_robin",
                retryable_codes={grpc.StatusCode.UNAVAILABLE}) as channel:
            call = channel.unary_unary(UNARY)

            def client() -> None:
                while not done.is_set():
                    try:
                        call(b"x", timeout=5)
                    except grpc.RpcError as exc:
                        errors.append(exc)
                    count[0] += 1

            thread = threading.Thread(target=client)
            thread.start()
            wait_until(lambda: count[0] >= 30, message="30 calls")
            procs[0].kill()
            before = count[0]
            wait_until(lambda: count[0] >= before + 60, message="60 more calls")
            done.set()
            thread.join(10)
            rows = channel.lb.snapshot().by_address()
    finally:
        done.set()
        for p in procs:
            p.stop()
    assert errors == []
    assert rows[procs[0].address].failures >= 1


def test_server_answering_unavailable_is_counted_failing_and_ejected(
        backends: list[GrpcBackend]) -> None:
    """UNAVAILABLE answers are gateway failures; with outlier detection the endpoint is ejected."""
    bad = backends[0]
    bad.status = grpc.StatusCode.UNAVAILABLE
    options: dict[str, Any] = {"strategy": "round_robin"}
    detection = getattr(clientlb, "OutlierDetection", None)
    if detection is not None:
        options["outlier_detection"] = detection(consecutive_failures=3)
    with clientlb.grpc.insecure_channel([b.address for b in backends], **options) as channel:
        seen = outcomes_of(channel.lb)
        call = channel.unary_unary(UNARY)
        failures = 0
        for _ in range(30):
            try:
                call(b"x", timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                failures += 1
        bad_outcomes = [o for a, o in seen if a == bad.address]
        assert bad_outcomes and set(bad_outcomes) == {clientlb.Outcome.GATEWAY_FAILURE}
        if detection is not None:
            assert channel.lb.snapshot().by_address()[bad.address].state == "ejected"
            assert failures <= 3
            assert bad.count() == failures


def test_removed_endpoint_sub_channel_is_drained_then_closed(
        backends: list[GrpcBackend]) -> None:
    """An endpoint leaving the target keeps its open stream, takes no new call, then closes."""
    for b in backends:
        b.hold = threading.Event()
    lb = clientlb.LoadBalancer([b.address for b in backends], strategy="round_robin")
    with clientlb.grpc.insecure_channel(lb) as channel:
        stream = channel.unary_stream(USTREAM)(b"x", timeout=10)
        first = next(stream)
        owner = next(b for b in backends if first.startswith(b.name.encode()))
        assert channel.sub_channels()[owner.address] == "open"
        lb.remove(owner.address)
        assert channel.sub_channels()[owner.address] == "draining"
        answers = {channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(6)}
        assert owner.name.encode() not in answers
        owner.hold.set()  # type: ignore[union-attr]
        assert [p.split(b":")[0] for p in stream] == [owner.name.encode()] * 2
        wait_until(lambda: owner.address not in channel.sub_channels(), timeout=5,
                   message="drained sub-channel closed")
    lb.close()


class _Recorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    def _details(self, details: Any) -> Any:
        self.methods.append(details.method)
        metadata = [*(details.metadata or ()), ("x-intercepted", "yes")]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else \
            _Details(details.method, details.timeout, metadata, details.credentials,
                     details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, timeout: Any, metadata: Any, credentials: Any,
                 wait_for_ready: Any, compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def test_interceptors_compose_on_top_of_a_balanced_channel(
        backends: list[GrpcBackend]) -> None:
    """grpc.intercept_channel wraps a balanced channel: once per call, every shape balanced."""
    recorder = _Recorder()
    dead = f"127.0.0.1:{free_port()}"
    lb = clientlb.LoadBalancer([dead, *(b.address for b in backends)], strategy="round_robin")
    with clientlb.grpc.insecure_channel(lb) as balanced:
        channel = grpc.intercept_channel(balanced, recorder)
        call = channel.unary_unary(UNARY)
        answers = {call(b"x", timeout=5) for _ in range(8)}  # retries happen beneath
        assert call.with_call(b"x", timeout=5)[1].code() is grpc.StatusCode.OK
        assert call.future(b"x", timeout=5).result()
        streams = [channel.unary_stream(USTREAM)(b"x", timeout=5) for _ in range(4)]
        assert all(len(list(s)) == 3 for s in streams)
        assert all(s.code() is grpc.StatusCode.OK for s in streams)
    lb.close()
    assert answers == {b"b0", b"b1", b"b2"}
    assert recorder.methods == [UNARY] * 10 + [USTREAM] * 4
    assert all(b.metadata.get("x-intercepted") == "yes" for b in backends)


def test_tls_verifies_the_logical_name_while_connecting_to_ips() -> None:
    """Certificates for users.internal are accepted on 127.0.0.1; another name is refused."""
    ca = trustme.CA()
    cert = ca.issue_cert("users.internal")
    creds = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())])
    servers = [GrpcBackend(f"t{i}", credentials=creds) for i in range(2)]
    client_creds = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    try:
        addresses = [s.address for s in servers]
        with clientlb.grpc.secure_channel(addresses, client_creds, server_name="users.internal",
                                          strategy="round_robin") as channel:
            answers = {channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(4)}
        assert answers == {b"t0", b"t1"}
        lb = clientlb.LoadBalancer(addresses, name="users.internal")
        with clientlb.grpc.secure_channel(lb, client_creds) as channel:
            assert channel.unary_unary(UNARY)(b"x", timeout=5) in answers
        lb.close()
        with clientlb.grpc.secure_channel(addresses, client_creds, server_name="other.internal",
                                          transparent_retries=0) as channel, \
                pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(UNARY)(b"x", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        for s in servers:
            s.stop()


def test_hedging_answers_from_the_fast_endpoint_when_one_is_slow(
        backends: list[GrpcBackend]) -> None:
    """With Hedging, a slow first attempt is overtaken by a hedge on another endpoint."""
    backends[0].delay = 1.0
    hedging = clientlb.grpc.Hedging(max_attempts=2, delay=0.05, methods={UNARY})
    with clientlb.grpc.insecure_channel([backends[0].address, backends[1].address],
                                        strategy="round_robin", hedging=hedging) as channel:
        seen = outcomes_of(channel.lb)
        call = channel.unary_unary(UNARY)
        answers = [call(b"x", timeout=5) for _ in range(4)]
        answers.append(call.with_call(b"x", timeout=5)[0])
        hedges = channel.lb.retry_budget.statistics()["retries"]  # type: ignore[union-attr]
    assert set(answers) == {b"b1"}
    assert hedges >= 2  # every hedge is drawn from the balancer's retry budget
    assert clientlb.Outcome.CANCELLED in {o for a, o in seen if a == backends[0].address}


def test_retryable_codes_retry_on_another_endpoint_within_the_budget(
        backends: list[GrpcBackend]) -> None:
    """retryable_codes={RESOURCE_EXHAUSTED}: retried elsewhere, and the budget counts it."""
    backends[0].status = grpc.StatusCode.RESOURCE_EXHAUSTED
    with clientlb.grpc.insecure_channel(
            [b.address for b in backends], strategy="round_robin",
            retryable_codes={grpc.StatusCode.RESOURCE_EXHAUSTED}) as channel:
        call = channel.unary_unary(UNARY)
        answers = [call(b"x", timeout=5) for _ in range(6)]
        assert set(answers) <= {b"b1", b"b2"}
        stats = channel.lb.retry_budget.statistics()  # type: ignore[union-attr]
        assert stats["retries"] == backends[0].count() >= 1
        futures = [call.future(b"x", timeout=5) for _ in range(6)]  # retries on a timer
        assert {f.result() for f in futures} <= {b"b1", b"b2"}
        assert all(f.code() is grpc.StatusCode.OK and f.done() for f in futures)
    with clientlb.grpc.insecure_channel([backends[0].address]) as channel, \
            pytest.raises(grpc.RpcError):
        channel.unary_unary(UNARY)(b"x", timeout=5)  # not retryable by default


def test_no_endpoint_is_an_unavailable_rpc_error_and_a_no_endpoint_available() -> None:
    """A closed balancer: the error is a grpc.RpcError(UNAVAILABLE) and NoEndpointAvailable."""
    lb = clientlb.LoadBalancer(["127.0.0.1:1"])
    channel = clientlb.grpc.insecure_channel(lb)
    lb.close()
    with pytest.raises(clientlb.NoEndpointAvailable) as info:
        channel.unary_unary(UNARY)(b"x")
    assert isinstance(info.value, grpc.RpcError)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    future = channel.unary_unary(UNARY).future(b"x")
    assert isinstance(future.exception(), clientlb.NoEndpointAvailable)
    channel.close()


def test_subscribe_reports_ready_and_channel_ready_future_works(
        backends: list[GrpcBackend]) -> None:
    """Connectivity passes through: channel_ready_future connects every endpoint."""
    with clientlb.grpc.insecure_channel([b.address for b in backends]) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        grpc.channel_ready_future(channel).result(timeout=5)
        assert set(channel.sub_channels()) == {b.address for b in backends}
        wait_until(lambda: grpc.ChannelConnectivity.READY in states, timeout=5,
                   message="READY reported")
        channel.unsubscribe(states.append)
        assert "READY" in repr(channel)


def test_bad_options_are_config_errors() -> None:
    """Bad channel options fail at construction with the field named."""
    with pytest.raises(clientlb.ConfigError, match="failure_codes"):
        clientlb.grpc.insecure_channel(["127.0.0.1:1"], failure_codes={"NOPE"})
    with pytest.raises(clientlb.ConfigError, match=r"hedging\.max_attempts"):
        clientlb.grpc.Hedging(max_attempts=9)
    with pytest.raises(clientlb.ConfigError, match=r"max_attempts must be an integer 1\.\.5"):
        clientlb.grpc.insecure_channel(["127.0.0.1:1"], max_attempts=6)
    lb = clientlb.LoadBalancer(["127.0.0.1:1"], retry=None)
    with pytest.raises(clientlb.ConfigError, match="lb_options"):
        clientlb.grpc.insecure_channel(lb, strategy="random")
    with pytest.raises(clientlb.ConfigError, match="retry=None"):
        clientlb.grpc.insecure_channel(lb, retryable_codes={grpc.StatusCode.UNAVAILABLE})
    with pytest.raises(clientlb.ConfigError, match="credentials"):
        clientlb.grpc.secure_channel(lb, "not credentials")  # type: ignore[arg-type]
    lb.close()


def test_import_clientlb_works_without_grpcio_and_clientlb_grpc_says_what_to_install() -> None:
    """grpcio is optional: clientlb imports without it; clientlb.grpc names the extra."""
    code = (
        "import sys; sys.modules['grpc'] = None\n"
        "import clientlb\n"
        "try:\n"
        "    import clientlb.grpc\n"
        "except ImportError as exc:\n"
        "    print('ERR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "ERR" in out and "pip install clientlb[grpc]" in out


def test_grpc_health_checks_keep_calls_off_a_not_serving_endpoint(
        backends: list[GrpcBackend]) -> None:
    """With HealthCheck(kind="grpc"), a NOT_SERVING backend (grpc.health.v1) gets no calls."""
    check = clientlb.HealthCheck(kind="grpc", interval=0.05, timeout=1.0, jitter=0.0,
                                 healthy_threshold=1, unhealthy_threshold=1)
    backends[0].health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    with clientlb.grpc.insecure_channel([b.address for b in backends], strategy="round_robin",
                                        health_check=check) as channel:
        wait_until(lambda: channel.lb.snapshot().by_address()[backends[0].address].state
                   == "unhealthy", timeout=10, message="b0 unhealthy")
        answers = {channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(9)}
    assert answers == {b"b1", b"b2"}


def test_a_closed_channel_refuses_calls_like_grpcio_and_leaves_nothing_in_flight(
        backends: list[GrpcBackend]) -> None:
    """After close(), calls raise ValueError as grpcio's do; the shared balancer stays clean."""
    lb = clientlb.LoadBalancer([b.address for b in backends])
    channel = clientlb.grpc.insecure_channel(lb)
    assert channel.unary_unary(UNARY)(b"x", timeout=5)
    channel.close()
    with pytest.raises(ValueError, match="closed channel"):
        channel.unary_unary(UNARY)(b"x", timeout=5)
    with pytest.raises(ValueError, match="closed channel"):
        channel.unary_stream(USTREAM)(b"x", timeout=5)
    assert all(row.in_flight == 0 for row in lb.snapshot().endpoints)
    assert channel.sub_channels() == {} and "closed" in repr(channel)
    lb.close()


@pytest.mark.servers
def test_channel_follows_srv_changes_and_drains_the_endpoint_that_left(
        backends: list[GrpcBackend], tmp_path: Any) -> None:
    """The grpc/grpc#30015 case: records change in a real DNS server (Knot); new calls reach
    the new endpoint, and the one that left has its sub-channel closed."""
    from .conftest import require_binary
    from .dns_server import KnotServer

    b0, b1, b2 = backends
    knot = KnotServer(require_binary("knotd", "/usr/sbin/knotd"), tmp_path / "knot",
                      records=f"_grpc._tcp.users SRV 0 1 {b0.port} ns.test.\n"
                              f"_grpc._tcp.users SRV 0 1 {b1.port} ns.test.\n")
    fast = {"min_ttl": 0.05, "ttl_jitter": 0.0, "timeout": 1.0}
    try:
        with clientlb.grpc.insecure_channel(f"srv://{knot.server}/_grpc._tcp.users.test",
                                            strategy="round_robin",
                                            resolver_options=fast) as channel:
            call = channel.unary_unary(UNARY)
            assert {call(b"x", timeout=5) for _ in range(4)} == {b"b0", b"b1"}
            assert set(channel.sub_channels()) == {b0.address, b1.address}
            knot.update(delete=[("_grpc._tcp.users", "SRV", f"0 1 {b0.port} ns.test.")],
                        add=[("_grpc._tcp.users", 1, "SRV", f"0 1 {b2.port} ns.test.")])
            wait_until(lambda: {e.port for e in channel.lb.endpoints()} == {b1.port, b2.port},
                       timeout=10, message="the new SRV set")
            assert {call(b"x", timeout=5) for _ in range(4)} == {b"b1", b"b2"}
            wait_until(lambda: set(channel.sub_channels()) == {b1.address, b2.address},
                       timeout=5, message="b0's sub-channel closed")
    finally:
        knot.close()


def test_the_logical_name_becomes_authority_and_tls_name() -> None:
    """dns:// targets send NAME:PORT as :authority and check NAME in certificates;
    server_name= wins; a bare static list keeps gRPC's default (the address)."""
    from clientlb._engine.naming import LogicalName
    from clientlb.grpc._common import channel_options, endpoint_target, logical_name

    lb = clientlb.LoadBalancer(["127.0.0.1:1"])
    assert logical_name(lb, None) is None
    assert channel_options(None, None) == ()
    assert logical_name(lb, "users.internal") == LogicalName("users.internal")
    named = clientlb.LoadBalancer(["127.0.0.1:1"], name="orders.internal")
    assert logical_name(named, None) == LogicalName("orders.internal")
    opts = dict(channel_options([("grpc.max_receive_message_length", 1 << 20)],
                                LogicalName("users.internal", 50051)))
    assert opts == {"grpc.max_receive_message_length": 1 << 20,
                    "grpc.default_authority": "users.internal:50051",
                    "grpc.ssl_target_name_override": "users.internal"}
    mine = dict(channel_options([("grpc.default_authority", "x")],
                                LogicalName("users.internal")))
    assert mine["grpc.default_authority"] == "x"  # the caller's own option wins
    assert endpoint_target(clientlb.Endpoint("10.0.0.7", 50051)) == "ipv4:10.0.0.7:50051"
    assert endpoint_target(clientlb.Endpoint("::1", 50051)) == "ipv6:[::1]:50051"
    assert endpoint_target(clientlb.Endpoint("db.internal", 5)) == "dns:///db.internal:5"
    with pytest.raises(clientlb.ConfigError, match="options"):
        channel_options(42, None)  # type: ignore[arg-type]
    dns = clientlb.LoadBalancer("dns://127.0.0.1:1/users.internal:50051")  # never picked
    assert logical_name(dns, None) == LogicalName("users.internal", 50051)
    for balancer in (lb, named, dns):
        balancer.close()


def test_channel_ready_future_connects_endpoints_that_arrive_later(
        backends: list[GrpcBackend]) -> None:
    """grpc.channel_ready_future on an empty balancer matures once an endpoint is added."""
    lb = clientlb.LoadBalancer([backends[0].address])
    lb.remove(backends[0].address)
    with clientlb.grpc.insecure_channel(lb) as channel:
        ready = grpc.channel_ready_future(channel)
        assert not ready.done()
        lb.add(backends[1].address)
        ready.result(timeout=5)
        assert channel.sub_channels() == {backends[1].address: "open"}
    lb.close()


def test_calls_never_fail_while_endpoints_leave_and_come_back(
        backends: list[GrpcBackend]) -> None:
    """Four threads call while an endpoint is removed and re-added 20 times: no error, no
    call left in flight, no sub-channel left open for an endpoint that is gone."""
    lb = clientlb.LoadBalancer([b.address for b in backends], strategy="least_request")
    errors: list[BaseException] = []
    stop = threading.Event()
    done = [0]
    with clientlb.grpc.insecure_channel(lb) as channel:
        call = channel.unary_unary(UNARY)
        stream = channel.unary_stream(USTREAM)

        def client() -> None:
            while not stop.is_set():
                try:
                    call(b"x", timeout=5)
                    assert len(list(stream(b"x", timeout=5))) == 3
                except Exception as exc:
                    errors.append(exc)
                done[0] += 1

        def some_calls() -> None:
            mark = done[0]
            wait_until(lambda: done[0] >= mark + 2, timeout=5, message="calls go on")

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(20):
            lb.remove(backends[0].address)
            some_calls()
            lb.add(backends[0].address)
            some_calls()
        lb.remove(backends[0].address)
        stop.set()
        for t in threads:
            t.join(10)
        wait_until(lambda: set(channel.sub_channels()) <= {backends[1].address,
                                                           backends[2].address},
                   timeout=5, message="the removed endpoint's sub-channels closed")
        assert all(row.in_flight == 0 for row in lb.snapshot().endpoints)
    lb.close()
    assert errors == []


def test_client_streams_skip_an_endpoint_that_just_failed_to_connect(
        backends: list[GrpcBackend]) -> None:
    """Client-streaming calls cannot be replayed; once a call failed to connect to an
    endpoint, it is in transient failure and picks leave it out (no stream goes there)."""
    dead = f"127.0.0.1:{free_port()}"
    with clientlb.grpc.insecure_channel([dead, backends[0].address], strategy="round_robin",
                                        outlier_detection=None) as channel:
        unary = channel.unary_unary(UNARY)
        while channel.lb.snapshot().by_address()[dead].failures == 0:
            unary(b"x", timeout=5)  # until one attempt hit the dead port
        for _ in range(4):
            assert channel.stream_unary(SUNARY)(iter([b"a"]), timeout=5) == b"b0:1"
            assert list(channel.stream_stream(SSTREAM)(iter([b"a"]), timeout=5)) == [b"a@b0"]
        assert channel.lb.snapshot().by_address()[dead].failures == 1


def test_a_future_can_be_cancelled_and_reports_it(backends: list[GrpcBackend]) -> None:
    """future().cancel() cancels the attempt on the wire; the endpoint is not blamed."""
    backends[0].delay = 2.0
    with clientlb.grpc.insecure_channel([backends[0].address]) as channel:
        seen = outcomes_of(channel.lb)
        future = channel.unary_unary(UNARY).future(b"x", timeout=5)
        wait_until(lambda: backends[0].count() == 1, timeout=5, message="call arrived")
        done: list[Any] = []
        future.add_done_callback(done.append)
        assert future.cancel()
        wait_until(lambda: future.done(), timeout=5, message="cancelled future done")
        assert future.cancelled() and done == [future]
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
    assert seen == [(backends[0].address, clientlb.Outcome.CANCELLED)]
