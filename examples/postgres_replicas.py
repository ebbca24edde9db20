"""Read queries balanced over two PostgreSQL streaming replicas; writes go to the primary.

A real setup, on loopback: a primary, and two hot-standby replicas cloned from it
with ``pg_basebackup -R`` that stream its WAL. Four reader threads run
``SELECT``s through a :class:`clientlb.LoadBalancer` over the replicas while the
main thread writes to the primary; a third of the way through, one replica is
stopped the hard way (``pg_ctl stop -m immediate``). The reads go on: a read
whose connect is refused is reported as a connect failure and retried on the
other replica, so no read fails. At the end the surviving replica has replayed
every write.

The driver opens its own sockets, so this is the generic pattern of
docs/tcp.md, with ``clientlb.connect_with`` doing the failover::

    conn, pick = clientlb.connect_with(
        lb, lambda ep: psycopg.connect(host=ep.host, port=ep.port, ...),
        connect_errors=psycopg.OperationalError)
    with pick, conn:
        conn.execute("SELECT ...")

Run by hand::

    python examples/postgres_replicas.py [--reads 400]

Needs Debian's ``postgresql`` package (initdb, pg_ctl, pg_basebackup under
/usr/lib/postgresql/*/bin; ``PG_BINDIR`` overrides) and ``psycopg``. PostgreSQL
refuses to run as root, so as root the servers run as the user ``nobody``.
Exit status 0 when every read succeeded and both replicas served reads.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import logging
import os
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
from typing import Any

import psycopg

import clientlb

RUN_AS = "nobody" if os.geteuid() == 0 else None  # postgres refuses to run as root


def pg_bindir() -> Path:
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which:  # possibly a symlink beside which pg_basebackup is missing
        return Path(which).resolve().parent
    sys.exit("PostgreSQL server binaries not found: apt-get install postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One PostgreSQL server in its own directory on a loopback port."""

    def __init__(self, bindir: Path, root: Path, name: str) -> None:
        self.bindir = bindir
        self.name = name
        self.dir = root / name
        self.data = self.dir / "data"
        self.port = free_port()
        self.dir.mkdir()
        if RUN_AS:
            shutil.chown(self.dir, RUN_AS)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bindir / tool), *args], check=True, user=RUN_AS,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir)

    def configure(self) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",  # a throwaway example cluster: speed over durability
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "40",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{k} = {v}\n" for k, v in settings.items()))

    def init_primary(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "--no-locale", "-E", "UTF8", "--no-sync")
        self.configure()

    def clone_from(self, primary: Postgres) -> None:
        # -R: write standby.signal and primary_conninfo: a streaming hot standby.
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                 "postgres", "-D", str(self.data), "-R", "-X", "stream", "--no-sync")
        self.configure()  # appended last: its own port wins over the primary's

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                 "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                               dbname="postgres", autocommit=True, **kwargs)


@contextlib.contextmanager
def cluster(replicas: int = 2) -> Iterator[tuple[Postgres, list[Postgres]]]:
    """A primary and ``replicas`` streaming replicas, torn down on exit."""
    bindir = pg_bindir()
    # As root the servers run as nobody, who must be able to reach the
    # directory: /tmp rather than a $TMPDIR that may sit under /root.
    shared_tmp = "/tmp" if RUN_AS and os.path.isdir("/tmp") else None
    root = Path(tempfile.mkdtemp(prefix="clientlb-pg-", dir=shared_tmp))
    if RUN_AS:
        os.chmod(root, 0o755)
    started: list[Postgres] = []
    try:
        primary = Postgres(bindir, root, "primary")
        primary.init_primary()
        primary.start()
        started.append(primary)
        with primary.connect() as conn:
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
            conn.execute("INSERT INTO orders (item) SELECT 'seed-' || n "
                         "FROM generate_series(1, 100) AS n")
        copies = []
        for i in range(1, replicas + 1):
            replica = Postgres(bindir, root, f"replica{i}")
            replica.clone_from(primary)
            replica.start()
            started.append(replica)
            copies.append(replica)
        yield primary, copies
    finally:
        for server in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def balanced_read(lb: clientlb.LoadBalancer, sql: str
                  ) -> tuple[clientlb.Endpoint, tuple[Any, ...]]:
    """Run one read-only query on a replica picked by ``lb``, failing over.

    ``clientlb.connect_with`` tries replicas until one accepts the connection:
    a ``psycopg.OperationalError`` from ``psycopg.connect`` never reached a
    database, so it is reported as a connect failure (which outlier detection
    counts) and another replica is tried. The ``with pick`` block then reports
    the query's own outcome and latency. A read is idempotent, so a query cut
    off by a replica going away mid-way is run once more.
    """
    for attempt in range(2):
        # --8<-- [start:connect_with]
        conn, pick = clientlb.connect_with(
            lb,
            lambda ep: psycopg.connect(host=ep.host, port=ep.port, user="postgres",
                                       dbname="postgres", autocommit=True,
                                       connect_timeout=2),
            connect_errors=psycopg.OperationalError)
        # --8<-- [end:connect_with]
        try:
            with pick, conn:
                row = conn.execute(sql).fetchone()
        except psycopg.OperationalError:
            if attempt:
                raise
            continue  # the server went away mid-query (reported as a failure)
        assert row is not None
        return pick.endpoint, tuple(row)
    raise AssertionError("unreachable")


def wait_replayed(primary: Postgres, replica: Postgres, timeout: float = 30.0) -> None:
    """Wait until ``replica`` has replayed every WAL record the primary wrote so far."""
    with primary.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
    deadline = time.monotonic() + timeout
    with replica.connect() as conn:
        while True:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                               (lsn,)).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica.name} did not replay up to {lsn}")
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=400, help="read queries in all")
    parser.add_argument("--threads", type=int, default=4, help="reader threads")
    args = parser.parse_args()
    # clientlb logs each endpoint state change once (e.g. an ejection).
    logging.basicConfig(level=logging.WARNING, format="  log %(name)s: %(message)s")

    with cluster(replicas=2) as (primary, replicas):
        r1, r2 = replicas
        names = {r.address: r.name for r in replicas}
        print(f"primary {primary.address}, replicas {r1.address} and {r2.address} "
              "(streaming, hot standby)")
        lb = clientlb.LoadBalancer([r1.address, r2.address], name="pg-replicas",
                                   strategy="least_request")
        served: collections.Counter[str] = collections.Counter()
        served_after_stop: collections.Counter[str] = collections.Counter()
        failures: list[str] = []
        lock = threading.Lock()
        done = 0
        stopped = threading.Event()
        stop_at = args.reads // 3

        def reader() -> None:
            nonlocal done
            while True:
                with lock:
                    if done >= args.reads:
                        return
                    done += 1
                    n = done
                began_after_stop = stopped.is_set()
                try:
                    ep, (_rows, in_recovery) = balanced_read(
                        lb, "SELECT count(*), pg_is_in_recovery() FROM orders")
                except (clientlb.ConnectError, psycopg.Error) as exc:
                    with lock:
                        failures.append(str(exc))
                    continue
                assert in_recovery, "a read reached a server that is not a replica"
                with lock:
                    served[names[ep.address]] += 1
                    if began_after_stop:
                        served_after_stop[names[ep.address]] += 1
                if n == stop_at:
                    r1.stop("immediate")  # mid-run, while the other readers keep reading
                    stopped.set()
                    print(f"read {n}: stopped {r1.name} ({r1.address}) with -m immediate")

        threads = [threading.Thread(target=reader) for _ in range(args.threads)]
        for t in threads:
            t.start()
        writes = 0
        with primary.connect() as conn:  # writes go to the primary, never to the balancer
            while any(t.is_alive() for t in threads):
                conn.execute("INSERT INTO orders (item) VALUES (%s)", (f"order-{writes}",))
                writes += 1
                time.sleep(0.01)
        for t in threads:
            t.join()

        wait_replayed(primary, r2)
        with primary.connect() as conn:
            on_primary = conn.execute("SELECT count(*) FROM orders").fetchone()
        with r2.connect() as conn:
            on_replica = conn.execute("SELECT count(*) FROM orders").fetchone()
        snap = lb.snapshot().by_address()[r1.address]
        rows_primary = on_primary[0] if on_primary else None
        rows_replica = on_replica[0] if on_replica else None

        print(f"reads: {sum(served.values())} ok, {len(failures)} failed; "
              f"per replica: {dict(sorted(served.items()))}")
        print(f"after the stop: {dict(sorted(served_after_stop.items()))}; "
              f"{r1.name}: {snap.failures} connect failures reported, each read "
              f"failed over to {r2.name}; {r1.name} is now {snap.state}")
        print(f"writes to the primary: {writes}; rows on the primary {rows_primary}, "
              f"on {r2.name} {rows_replica}")
        lb.close()

        ok = (not failures and served[r1.name] > 0 and served[r2.name] > 0
              and sum(served.values()) == args.reads
              and set(served_after_stop) <= {r2.name}
              and rows_primary == rows_replica)
        for message in failures[:5]:
            print("  failed:", message)
        print("OK: every read succeeded through the replica stop" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    # SIGTERM (a test runner's timeout) unwinds like Ctrl-C: the servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
