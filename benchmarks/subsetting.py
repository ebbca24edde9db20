"""Subsetting at fleet scale: full mesh, random subsetting (gRFC A68), deterministic aperture.

Run by hand::

    .venv/bin/python benchmarks/subsetting.py              # 1,000×300 and 10,000×3,000
    .venv/bin/python benchmarks/subsetting.py --loopback   # and 20 processes × 10 nginx
    .venv/bin/python benchmarks/subsetting.py --smoke      # seconds (tests)

**Simulation** (no sockets). For each fleet (clients × backends) and each mode:

* every client's subset is computed by clientlb's own ``Subsetter`` — the object a
  ``LoadBalancer(subset=...)`` holds — over the backends' endpoint states:
  ``Aperture(client_index=i, client_count=C)`` with the default derived size (25
  connections per backend, at least 5 backends), ``RandomSubset(size, seed=<hash of the
  client's id>)`` with the same size, or every backend (full mesh); the client's index
  is its rank among the client ids sorted, as ``peers=`` discovery gives it;
* its requests are picked by the real ``least_request`` strategy (P2C on in-flight,
  weighted by the aperture's overlap weights) from a picker built over the client's
  members — the strategy and picker objects of the balancer, driven directly rather
  than through one ``LoadBalancer`` per client, which at 10,000 clients would cost
  gigabytes for no difference in the picks. Each client sends ``--requests`` requests
  keeping 4 in flight (closed loop, equal latencies); every client sends the same
  number (uniform client load), one client after the other (clients never see each
  other's load, so the order changes nothing).

Reported: connections in all (one per client and backend of its subset), connections
per backend and requests per backend as max/mean, and the connections opened (and
closed) by two kinds of churn: 1 % of the backends replaced (as many leave as new ones
join, a rolling deploy with new addresses), and 1 % of the clients replaced by clients
with new addresses (the aperture ranks its clients by address, as ``peers=`` discovery
of a DNS name does; clients that come back under the same name — a StatefulSet
ordinal, a Consul service ID — keep their places and move nothing). Targets (issue
17): at least 90 % fewer connections than the full mesh with requests per backend
max/mean ≤ 1.05.

**Loopback** (``--loopback``): one nginx with 10 ``server`` blocks (10 backends on
127.0.0.1, ``return 200``), 20 client processes each with its own ``LoadBalancer``
(``least_request``) and ``clientlb.HTTPTransport`` (keep-alive for the whole run)
sending ``--loopback-requests`` GETs, one at a time; connections are counted at the
backends from nginx's access log (distinct ``$connection`` serials per port), and the
load per backend from the same log.

Charts (matplotlib): ``perf_subsetting.png`` (connections, balance, churn) and
``perf_subsetting_load.png`` (requests per backend, sorted) in ``--img``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from http_overhead import binary, free_port, wait_port

import clientlb
from clientlb import Aperture, Endpoint, RandomSubset
from clientlb._core.load import EndpointLoad
from clientlb._core.state import EndpointState
from clientlb._subset.aperture import aperture_size
from clientlb._subset.config import DEFAULT_CONNECTIONS_PER_BACKEND, DEFAULT_MIN_SIZE
from clientlb._subset.subsetter import Subsetter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("full mesh", "random subset", "aperture")
CONCURRENCY = 4  # requests each simulated client keeps in flight
STRATEGY = "least_request"


# ------------------------------------------------------------------------------ the fleet

def random_ids(n: int, prefix: int, port: int, rng: random.Random,
               taken: set[str] | None = None) -> list[str]:
    """``n`` distinct addresses drawn at random in ``prefix.0.0.0/8`` (pod IPs)."""
    taken = set() if taken is None else taken
    out: list[str] = []
    while len(out) < n:
        address = (f"{prefix}.{rng.randrange(256)}.{rng.randrange(256)}."
                   f"{rng.randrange(1, 255)}:{port}")
        if address not in taken:
            taken.add(address)
            out.append(address)
    return out


def backend_ids(n: int, rng: random.Random) -> list[str]:
    return random_ids(n, 10, 8080, rng)


def client_ids(n: int, rng: random.Random) -> list[str]:
    return random_ids(n, 20, 9000, rng)


def states_of(addresses: Sequence[str]) -> list[EndpointState]:
    return [EndpointState(Endpoint.parse(a), 0.0, EndpointLoad(0.0)) for a in addresses]


Members = dict[str, float]  # backend address -> weight factor (1.0 but at aperture edges)


def subsets(mode: str, clients: Sequence[str], backends: Sequence[str], size: int
            ) -> dict[str, Members] | None:
    """Every client's subset (by client id), computed by clientlb's Subsetter; None for the
    full mesh (every client, every backend, weight 1)."""
    if mode == "full mesh":
        return None
    states = states_of(backends)
    ones = [1.0] * len(states)
    ranked = sorted(clients)
    out: dict[str, Members] = {}
    rng = random.Random(0)
    for index, client in enumerate(ranked):
        config: Aperture | RandomSubset
        if mode == "aperture":
            config = Aperture(client_index=index, client_count=len(ranked))
        else:
            config = RandomSubset(size, seed=xxhash.xxh64_intdigest(client.encode()))
        subsetter = Subsetter(config, name=client, rng=rng, on_place_change=lambda: None)
        members = subsetter.update(states, 0.0)
        factors = subsetter.scale(members, ones[:len(members)])
        out[client] = {s.address: f for s, f in zip(members, factors, strict=True)}
    return out


def churn(before: dict[str, Members] | None, after: dict[str, Members] | None,
          clients: tuple[Sequence[str], Sequence[str]],
          backends: tuple[Sequence[str], Sequence[str]]) -> tuple[int, int]:
    """Connections (opened, closed) from one fleet to the next."""
    if before is None or after is None:  # full mesh: every client with every backend
        old = {(c, b) for c in clients[0] for b in backends[0]} if len(clients[0]) * len(
            backends[0]) <= 200_000 else None
        if old is not None:
            new = {(c, b) for c in clients[1] for b in backends[1]}
            return len(new - old), len(old - new)
        same_c = len(set(clients[0]) & set(clients[1]))
        same_b = len(set(backends[0]) & set(backends[1]))
        kept = same_c * same_b
        return len(clients[1]) * len(backends[1]) - kept, len(clients[0]) * len(backends[0]) - kept
    opened = closed = 0
    for client in set(before) | set(after):
        old, new = set(before.get(client, ())), set(after.get(client, ()))
        opened += len(new - old)
        closed += len(old - new)
    return opened, closed


def requests(subs: dict[str, Members] | None, clients: Sequence[str], backends: Sequence[str],
             per_client: int, seed: int) -> Counter[str]:
    """Requests per backend: each client picks with the real least_request picker."""
    strategy = clientlb.STRATEGIES[STRATEGY]()
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    shared = None
    if subs is None:
        states = states_of(backends)
        shared = strategy.build(states, [1.0] * len(states), rng)
    for client in clients:
        if shared is not None:
            picker = shared
        else:
            members = subs[client]  # type: ignore[index]
            states = states_of(list(members))
            picker = strategy.build(states, list(members.values()), rng)
        window: deque[EndpointState] = deque()
        pick = picker.pick
        for _ in range(per_client):
            state = pick(None, 0.0)
            state.load.in_flight += 1
            counts[state.address] += 1
            window.append(state)
            if len(window) >= CONCURRENCY:
                window.popleft().load.in_flight -= 1
        for state in window:
            state.load.in_flight -= 1
    return counts


def expected(subs: dict[str, Members] | None, n_backends: int) -> float:
    """Requests per backend max/mean if every client split its load exactly by its
    weights (no sampling noise): 1 for the full mesh."""
    if subs is None:
        return 1.0
    load: Counter[str] = Counter()
    for members in subs.values():
        total = sum(members.values())
        for backend, w in members.items():
            load[backend] += w / total
    return ratio(list(load.values()), n_backends)


def ratio(values: Sequence[float], n: int) -> float:
    """max/mean over ``n`` backends (those absent count as 0)."""
    total = sum(values)
    return max(values) / (total / n) if total else float("nan")


@dataclass
class Row:
    clients: int
    backends: int
    mode: str
    size: int
    connections: int
    conn_ratio: float
    req_ratio: float
    req_expected: float
    backend_churn: tuple[int, int]
    client_churn: tuple[int, int]
    seconds: float
    load: list[float] = field(default_factory=list)  # requests per backend / mean, sorted


def replace(ids: Sequence[str], share: float, rng: random.Random) -> list[str]:
    """``ids`` with ``share`` of them replaced by new ones at random addresses of the same
    network (as pods of a rolling deploy come back with new IPs): they sort anywhere."""
    k = max(1, round(len(ids) * share))
    gone = set(rng.sample(list(ids), k))
    prefix, port = int(ids[0].split(".", 1)[0]), int(ids[0].rsplit(":", 1)[1])
    return [i for i in ids if i not in gone] + random_ids(k, prefix, port, rng, set(ids))


def simulate(n_clients: int, n_backends: int, per_client: int, seed: int = 1,
             log: bool = True) -> list[Row]:
    rng = random.Random(seed)
    clients, backends = client_ids(n_clients, rng), backend_ids(n_backends, rng)
    backends2 = replace(backends, 0.01, rng)
    clients2 = replace(clients, 0.01, rng)
    size = aperture_size(n_backends, n_clients, DEFAULT_CONNECTIONS_PER_BACKEND,
                         DEFAULT_MIN_SIZE)
    rows = []
    for mode in MODES:
        t0 = time.perf_counter()
        subs = subsets(mode, clients, backends, size)
        if subs is None:
            connections, per_backend = n_clients * n_backends, [float(n_clients)] * n_backends
        else:
            conns = Counter(b for m in subs.values() for b in m)
            connections, per_backend = sum(conns.values()), [float(v) for v in conns.values()]
        counts = requests(subs, clients, backends, per_client, seed)
        mean = sum(counts.values()) / n_backends
        load = sorted([counts.get(b, 0) / mean for b in backends], reverse=True)
        b_churn = churn(subs, subsets(mode, clients, backends2, size), (clients, clients),
                        (backends, backends2))
        c_churn = churn(subs, subsets(mode, clients2, backends, size), (clients, clients2),
                        (backends, backends))
        row = Row(n_clients, n_backends, mode, n_backends if subs is None else size,
                  connections, ratio(per_backend, n_backends),
                  ratio([float(v) for v in counts.values()], n_backends),
                  expected(subs, n_backends), b_churn, c_churn,
                  time.perf_counter() - t0, load)
        rows.append(row)
        if log:
            print(f"  {n_clients:,}×{n_backends:,} {mode}: {row.seconds:.1f}s", file=sys.stderr,
                  flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| fleet | mode | backends per client | connections in all | vs full mesh | "
        "connections per backend max/mean | requests per backend max/mean (expected) | "
        "1 % of backends replaced: opened (closed) | 1 % of clients replaced: opened (closed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    full = {(r.clients, r.backends): r.connections for r in rows if r.mode == "full mesh"}
    for r in rows:
        base = full[(r.clients, r.backends)]
        saved = "—" if r.mode == "full mesh" else f"−{100 * (1 - r.connections / base):.1f} %"
        bo, bc = r.backend_churn
        co, cc = r.client_churn
        lines.append(
            f"| {r.clients:,} × {r.backends:,} | {r.mode} | "
            f"{r.size if r.mode != 'aperture' else f'{r.size} (+ edges)'} | "
            f"{r.connections:,} | {saved} | {r.conn_ratio:.3f} | "
            f"{r.req_ratio:.3f} ({r.req_expected:.3f}) | "
            f"{bo:,} ({bc:,}) = {100 * bo / r.connections:.1f} % | "
            f"{co:,} ({cc:,}) = {100 * co / r.connections:.1f} % |")
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> list[str]:
    out = []
    full = {(r.clients, r.backends): r.connections for r in rows if r.mode == "full mesh"}
    for r in rows:
        if r.mode != "aperture":
            continue
        saved = 1 - r.connections / full[(r.clients, r.backends)]
        ok = saved >= 0.9 and r.req_ratio <= 1.05
        out.append(f"- {r.clients:,} × {r.backends:,}: aperture {100 * saved:.1f} % fewer "
                   f"connections, requests per backend max/mean {r.req_ratio:.3f} — "
                   f"{'meets' if ok else 'MISSES'} the target (≥ 90 %, ≤ 1.05)")
    return out


# ------------------------------------------------------------------------------ charts

COLORS = {"full mesh": "#9e9e9e", "random subset": "#e07b39", "aperture": "#2f6db5"}


def _short(n: float) -> str:
    return f"{n / 1000:.0f}k" if n >= 10_000 else f"{n:,.0f}"


def charts(rows: list[Row], img: Path, loopback: list[LoopRow] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    fleets = sorted({(r.clients, r.backends) for r in rows})
    labels = [f"{c:,} × {b:,}" for c, b in fleets]
    by = {(r.clients, r.backends, r.mode): r for r in rows}
    width = 0.26
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    panels = [
        ("connections in all (log scale)", lambda r: r.connections, True),
        ("requests per backend, max / mean", lambda r: r.req_ratio, False),
        ("connections opened when 1 % of\nbackends / of clients are replaced (log)", None, True),
    ]
    for ax, (title, value, log) in zip(axes, panels, strict=True):
        for k, mode in enumerate(MODES):
            xs = [i + (k - 1) * width for i in range(len(fleets))]
            if value is not None:
                ys = [value(by[(c, b, mode)]) for c, b in fleets]
                bars = ax.bar(xs, ys, width, label=mode, color=COLORS[mode])
                fmt = "{:,.0f}" if log else "{:.2f}"
                ax.bar_label(bars, [fmt.format(y) for y in ys], fontsize=7, padding=1)
            else:
                ys_b = [max(1, by[(c, b, mode)].backend_churn[0]) for c, b in fleets]
                ys_c = [max(1, by[(c, b, mode)].client_churn[0]) for c, b in fleets]
                for offset, ys, hatch in ((-width / 4, ys_b, None), (width / 4, ys_c, "//")):
                    bars = ax.bar([x + offset for x in xs], ys, width / 2, color=COLORS[mode],
                                  hatch=hatch, edgecolor="white" if hatch else None)
                    ax.bar_label(bars, [_short(y) for y in ys], fontsize=6, padding=1)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(fleets)), labels)
        ax.set_xlabel("clients × backends")
        ax.set_title(title, fontsize=10)
    axes[1].axhline(1.05, color="black", linestyle="--", linewidth=0.8, label="target 1.05")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[1].set_ylim(0.9, max(r.req_ratio for r in rows) * 1.12)
    axes[2].text(0.02, 0.97, "plain: backends replaced\nhatched: clients replaced",
                 transform=axes[2].transAxes, fontsize=7, va="top")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Subsetting: full mesh, random subsetting (gRFC A68), deterministic aperture "
                 "— simulation with clientlb's subsetter and least_request picker", fontsize=10)
    fig.tight_layout()
    main = img / "perf_subsetting.png"
    fig.savefig(main, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(fleets) + (1 if loopback else 0),
                             figsize=(5 * (len(fleets) + (1 if loopback else 0)), 3.8),
                             squeeze=False)
    for ax, (c, b), label in zip(axes[0], fleets, labels, strict=False):
        for mode in MODES:
            load = by[(c, b, mode)].load
            ax.plot(range(len(load)), load, label=mode, color=COLORS[mode], linewidth=1.4,
                    linestyle="--" if mode == "full mesh" else "-")
        ax.axhline(1.05, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"simulation, {label}: requests per backend / mean", fontsize=9)
        ax.set_xlabel("backends, busiest first")
        ax.set_ylim(0, None)
        ax.legend(fontsize=8)
    if loopback:
        ax = axes[0][-1]
        for k, r in enumerate(loopback):
            total = sum(r.requests)
            mean = total / len(r.requests)
            ys = sorted((x / mean for x in r.requests), reverse=True)
            ax.plot(range(len(ys)), ys, marker="o", label=f"{r.mode} ({r.connections} conns)",
                    color=COLORS[r.mode], linewidth=1.2, zorder=3 - k)
        ax.set_title("loopback, 20 processes × 10 nginx: requests per backend / mean",
                     fontsize=9)
        ax.set_xlabel("backends, busiest first")
        ax.set_ylim(0, None)
        ax.legend(fontsize=8)
    fig.tight_layout()
    load_chart = img / "perf_subsetting_load.png"
    fig.savefig(load_chart, dpi=110)
    plt.close(fig)
    return [main, load_chart]


# ------------------------------------------------------------------------------ loopback

@dataclass
class LoopRow:
    mode: str
    connections: int
    per_backend: list[int]  # connections accepted per backend
    requests: list[int]  # requests per backend
    seconds: float


@contextmanager
def nginx_backends(tmp: Path, count: int) -> Iterator[tuple[list[int], Path]]:
    """One nginx (one worker) serving ``count`` backends on loopback ports; the access log
    has one line per request: ``port connection-serial``."""
    ports = [free_port() for _ in range(count)]
    servers = "\n".join(
        f"    server {{ listen 127.0.0.1:{p}; location / {{ return 200 \"ok\\n\"; }} }}"
        for p in ports)
    log = tmp / "access.log"
    (tmp / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log crit;
events {{ worker_connections 4096; }}
http {{
    log_format sub '$server_port $connection';
    access_log {log} sub buffer=256k flush=1s;
    client_body_temp_path {tmp}/body;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{servers}
}}
""")
    proc = subprocess.Popen([binary("nginx"), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports:
            wait_port(port)
        yield ports, log
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def client_main(args: argparse.Namespace) -> None:
    """One client process of the loopback run: ``--client INDEX``."""
    import httpx

    ports = [int(p) for p in args.ports.split(",")]
    subset: Aperture | RandomSubset | None = None
    if args.mode == "aperture":
        subset = Aperture(size=args.size, client_index=args.client, client_count=args.clients)
    elif args.mode == "random subset":
        subset = RandomSubset(args.size, seed=args.client + 1)
    lb = clientlb.LoadBalancer([f"127.0.0.1:{p}" for p in ports], name="svc",
                               strategy=STRATEGY, subset=subset)
    members = [e.address for e in lb.snapshot().endpoints if e.in_subset]
    print(json.dumps(members), flush=True)
    sys.stdin.readline()  # "go": every client starts together
    # keep-alive as long as the run: on a busy machine a process may stall past httpx's
    # default 5 s expiry, and a re-opened connection is not what this run counts
    limits = httpx.Limits(max_keepalive_connections=20, keepalive_expiry=600)
    transport = clientlb.HTTPTransport(lb, limits=limits)
    with httpx.Client(transport=transport, base_url="http://svc") as client:
        for _ in range(args.loopback_requests):
            client.get("/").raise_for_status()
    lb.close()


def loopback(n_clients: int, n_backends: int, size: int, per_client: int) -> list[LoopRow]:
    rows = []
    for mode in MODES:
        with tempfile.TemporaryDirectory(prefix="clientlb-subset-") as tmp, \
                nginx_backends(Path(tmp), n_backends) as (ports, log):
            procs = [subprocess.Popen(
                [sys.executable, __file__, "--client", str(i), "--clients", str(n_clients),
                 "--ports", ",".join(map(str, ports)), "--mode", mode, "--size", str(size),
                 "--loopback-requests", str(per_client)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for i in range(n_clients)]
            for p in procs:
                assert p.stdout is not None
                json.loads(p.stdout.readline())
            t0 = time.perf_counter()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                if p.wait(600) != 0:
                    raise RuntimeError(f"a client process of {mode} failed")
            seconds = time.perf_counter() - t0
            time.sleep(1.5)  # nginx flushes its buffered access log every second
            conns: dict[int, set[str]] = {p: set() for p in ports}
            reqs: Counter[int] = Counter()
            for line in log.read_text().splitlines():
                port, serial = line.split()
                conns[int(port)].add(serial)
                reqs[int(port)] += 1
        per_backend = [len(conns[p]) for p in ports]
        rows.append(LoopRow(mode, sum(per_backend), per_backend, [reqs[p] for p in ports],
                            seconds))
        print(f"  loopback {mode}: {seconds:.1f}s", file=sys.stderr, flush=True)
    return rows


def loop_table(rows: list[LoopRow], n_clients: int, size: int, per_client: int) -> str:
    lines = [
        f"| {n_clients} processes × {len(rows[0].requests)} nginx, {per_client} requests each "
        f"| connections (at the backends) | per backend min–max | requests per backend "
        "min–max | requests per backend max/mean |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        label = r.mode if r.mode == "full mesh" else f"{r.mode} (size {size})"
        mean = sum(r.requests) / len(r.requests)
        lines.append(f"| {label} | {r.connections} | {min(r.per_backend)}–{max(r.per_backend)} | "
                     f"{min(r.requests):,}–{max(r.requests):,} | {max(r.requests) / mean:.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small fleets, seconds")
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per simulated client (default 1000)")
    parser.add_argument("--loopback", action="store_true",
                        help="also run 20 client processes against 10 nginx backends")
    parser.add_argument("--loopback-requests", type=int, default=2000,
                        help="requests per client process of the loopback run (default 2000)")
    parser.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only redraw the charts and tables from a --json file")
    # a client process of the loopback run
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client_main(args)
        return

    if args.replot is not None:
        data = json.loads(args.replot.read_text())
        rows = [Row(**{**r, "backend_churn": tuple(r["backend_churn"]),
                       "client_churn": tuple(r["client_churn"])}) for r in data["rows"]]
        loops = [LoopRow(**r) for r in data["loopback"]] or None
        print(table(rows))
        if loops:
            print(loop_table(loops, 20, 3, data.get("loopback_requests", 2000)))
        print(", ".join(str(p) for p in charts(rows, args.img, loops)))
        return
    fleets = [(100, 30), (300, 90)] if args.smoke else [(1_000, 300), (10_000, 3_000)]
    per_client = 100 if args.smoke else args.requests
    started = time.perf_counter()
    rows = [row for c, b in fleets for row in simulate(c, b, per_client)]
    print(f"### Simulation ({per_client:,} requests per client, {STRATEGY}, "
          f"{CONCURRENCY} in flight)\n")
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    loop_rows = None
    if args.loopback:
        n_clients, n_backends, size = 20, 10, 3
        per = 50 if args.smoke else args.loopback_requests
        loop_rows = loopback(n_clients, n_backends, size, per)
        print(f"\n### Loopback ({n_clients} client processes × {n_backends} nginx backends)\n")
        print(loop_table(loop_rows, n_clients, size, per))
    paths = charts(rows, args.img, loop_rows)
    print(f"\ncharts: {', '.join(str(p) for p in paths)}")
    print(f"done in {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": [vars(r) for r in rows], "loopback": [vars(r) for r in loop_rows or []],
            "loopback_requests": args.loopback_requests}))


if __name__ == "__main__":
    main()
