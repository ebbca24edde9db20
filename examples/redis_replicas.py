"""Redis reads balanced over two replicas; writes go to the primary.

Three real ``redis-server`` processes on loopback: a primary and two replicas
(``--replicaof``). Each replica gets its own redis-py client (and so its own
connection pool); a :class:`clientlb.LoadBalancer` with ``least_request``
chooses the replica for every read, and the read's outcome goes back to the
balancer — the generic pattern of docs/tcp.md for drivers that pool their own
connections::

    with lb.pick() as p:
        value = clients[p.endpoint.address].get(key)

A third of the way through, one replica is killed (SIGKILL). A read whose
connection is refused never reached Redis, so it is reported as a connect
failure and tried on the other replica; outlier detection then ejects the dead
one. Every read succeeds.

Run by hand::

    python examples/redis_replicas.py [--reads 600]

Needs Debian's ``redis-server`` (``REDIS_SERVER`` overrides the path) and
``redis`` (redis-py). Exit status 0 when every read succeeded and both
replicas served reads.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import clientlb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server on a loopback port, without persistence."""

    def __init__(self, binary: str, root: Path, name: str,
                 replica_of: RedisServer | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.dir = root / name
        self.dir.mkdir()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--logfile", "redis.log"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                                  socket_connect_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis {name} did not start") from None
                time.sleep(0.02)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.kill()


@contextlib.contextmanager
def servers(replicas: int = 2) -> Iterator[tuple[RedisServer, list[RedisServer]]]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    root = Path(tempfile.mkdtemp(prefix="clientlb-redis-"))
    started: list[RedisServer] = []
    try:
        primary = RedisServer(binary, root, "primary")
        started.append(primary)
        copies = []
        for i in range(1, replicas + 1):
            replica = RedisServer(binary, root, f"replica{i}", replica_of=primary)
            started.append(replica)
            copies.append(replica)
        yield primary, copies
    finally:
        for server in started:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_synced(replica: RedisServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while replica.client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{replica.name} did not sync with the primary")
        time.sleep(0.02)


def balanced_get(lb: clientlb.LoadBalancer, clients: dict[str, redis.Redis],
                 key: str, attempts: int = 3) -> tuple[clientlb.Endpoint, bytes | None]:
    """GET ``key`` from a replica picked by ``lb``, failing over on connect errors."""
    # --8<-- [start:failover]
    tried: set[str] = set()
    last: Exception | None = None
    for _ in range(attempts):
        with lb.pick(exclude=tried) as p:
            try:
                value = clients[p.endpoint.address].get(key)
            except redis.ConnectionError as exc:
                # redis-py raises ConnectionError both when it cannot connect
                # (never reached Redis: safe to retry anywhere) and when a
                # pooled connection breaks mid-command (a GET is idempotent).
                refused = isinstance(exc.__cause__ or exc.__context__,
                                     ConnectionRefusedError) or "refused" in str(exc)
                p.done(clientlb.Outcome.CONNECT_FAILURE if refused
                       else clientlb.Outcome.FAILURE)
                tried.add(p.endpoint.address)
                last = exc
                continue
            return p.endpoint, value if isinstance(value, bytes) or value is None else None
    # --8<-- [end:failover]
    raise ConnectionError(f"GET {key} failed on {sorted(tried)}: {last}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=600, help="GETs in all")
    parser.add_argument("--threads", type=int, default=4, help="reader threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log %(name)s: %(message)s")

    with servers(replicas=2) as (primary, replicas):
        r1, r2 = replicas
        for r in replicas:
            wait_synced(r)
        names = {r.address: r.name for r in replicas}
        print(f"primary {primary.address}, replicas {r1.address} and {r2.address}")
        for i in range(100):  # writes go to the primary
            primary.client.set(f"user:{i}", f"name-{i}")
        primary.client.wait(2, 5000)  # both replicas acknowledged the writes

        # One client (one pool) per replica; redis-py's own retries are off so
        # that the balancer, which knows the other replica, does the retrying.
        # --8<-- [start:clients]
        clients = {r.address: redis.Redis(host="127.0.0.1", port=r.port, socket_timeout=2,
                                          socket_connect_timeout=2,
                                          retry=Retry(NoBackoff(), 0))
                   for r in replicas}
        lb = clientlb.LoadBalancer(list(clients), name="redis-replicas",
                                   strategy="least_request")
        # --8<-- [end:clients]
        served: collections.Counter[str] = collections.Counter()
        after_kill: collections.Counter[str] = collections.Counter()
        failures: list[str] = []
        wrong: list[str] = []
        lock = threading.Lock()
        done = 0
        killed = threading.Event()
        kill_at = args.reads // 3

        def reader() -> None:
            nonlocal done
            while True:
                with lock:
                    if done >= args.reads:
                        return
                    done += 1
                    n = done
                key = f"user:{n % 100}"
                began_after_kill = killed.is_set()
                try:
                    ep, value = balanced_get(lb, clients, key)
                except ConnectionError as exc:
                    with lock:
                        failures.append(str(exc))
                    continue
                with lock:
                    served[names[ep.address]] += 1
                    if began_after_kill:
                        after_kill[names[ep.address]] += 1
                    if value != f"name-{n % 100}".encode():
                        wrong.append(f"{key}={value!r}")
                if n == kill_at:
                    r1.kill()
                    killed.set()
                    print(f"read {n}: killed {r1.name} ({r1.address}) with SIGKILL")

        threads = [threading.Thread(target=reader) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        state = lb.snapshot().by_address()[r1.address]
        print(f"reads: {sum(served.values())} ok, {len(failures)} failed, "
              f"{len(wrong)} wrong values; per replica: {dict(sorted(served.items()))}")
        print(f"after the kill: {dict(sorted(after_kill.items()))}; {r1.name}: "
              f"{state.failures} failures reported, {r1.name} is now {state.state}")
        lb.close()
        for client in clients.values():
            client.close()

        ok = (not failures and not wrong and served[r1.name] > 0 and served[r2.name] > 0
              and sum(served.values()) == args.reads and set(after_kill) <= {r2.name})
        for message in failures[:5]:
            print("  failed:", message)
        print("OK: every read succeeded through the replica kill" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    # SIGTERM (a test runner's timeout) unwinds like Ctrl-C: the servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
