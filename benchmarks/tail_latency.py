"""Tail latency per strategy, with and without hedging, against nginx and HAProxy.

Run by hand::

    .venv/bin/python benchmarks/tail_latency.py [--duration 10] [--rounds 1] [--smoke]
        [--img DIR]

Five local backends (benchmarks/_scenario.py: a child process, asyncio, 4 requests served
at once each, 20 ms per request) and three variants:

* **slow** — backend 0 is 10× slower (200 ms) from the start;
* **turns slow** — backend 0 turns 10× slower a third into the run (how fast does each
  strategy move away?);
* **stalls** — backend 0 stalls for 200 ms every second (GC-like), otherwise fast.

An ``httpx.AsyncClient`` at concurrency 8 (low enough that the backends, not the client,
set the latency) sends GETs back to back through: clientlb's ``AsyncHTTPTransport`` with
each load-aware strategy (defaults: retries and outlier detection on); ``peak_ewma`` and
``round_robin`` with hedged requests (``clientlb.Hedging()``: adaptive delay, 5% extra
load at most) — round robin to see what hedging does alone; nginx round robin and
``least_conn``; HAProxy ``leastconn``; and an **oracle**, round robin over the four fast
backends only. ``ring_hash`` and ``maglev`` are left out: they place by key, not by load.
Reported: p50/p99/p99.9, each tail against the oracle's, the share of requests backend 0
received, the extra requests the backends received (retries and hedges), the hedges
sent/won/probes. Targets: peak_ewma p99 ≤ 1.1 × the oracle's in each variant (issue 9);
peak_ewma with hedging p99.9 ≤ 1.5 ×, p99 ≤ 1.05 ×, ≤ 5% extra requests (issue 19).

``--rounds N`` measures every configuration N times, interleaved; the percentiles are the
median of the rounds' (the shares, extra requests and hedges are pooled): on a shared
machine a pause of the client process makes every request in flight slow at once, and a
p99.9 of a few thousand requests is the few slowest — one pause in one round would
decide it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _scenario import Run, first_quiet, free_ports, measure, measure_proxy, ms

import clientlb

STRATEGIES = ("round_robin", "random", "least_request", "peak_ewma")
#: (row name, strategy) measured with ``clientlb.Hedging()``, the defaults.
HEDGED = (("peak_ewma + hedging", "peak_ewma"), ("round_robin + hedging", "round_robin"))
VARIANTS = ("slow", "turns slow", "stalls")
PROXIES = ("nginx round robin", "nginx least_conn", "HAProxy leastconn")


def specs(variant: str, delay: float, duration: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"delay": delay, "workers": 4} for _ in range(5)]
    if variant == "slow":
        out[0]["slow_from"] = -10.0  # during the warm-up too
    elif variant == "turns slow":
        out[0]["slow_from"] = duration / 3
    else:
        out[0].update(stall_every=1.0, stall_for=0.2)
    return out


def run(duration: float = 10.0, concurrency: int = 8, delay: float = 0.02, warmup: int = 200,
        img: Path | None = None, rounds: int = 1, only: list[str] | None = None
        ) -> dict[str, Any]:
    ports = free_ports(5)
    results: dict[str, list[Run]] = {}
    for variant in VARIANTS:
        sp = specs(variant, delay, duration)
        runs = one_round(ports, sp, duration, concurrency, warmup, only)
        for _ in range(rounds - 1):
            again = one_round(ports, sp, duration, concurrency, warmup, only)
            runs = [a.merge(b) for a, b in zip(runs, again, strict=True)]
        results[variant] = runs
        print(table(variant, runs, duration) + "\n", flush=True)
    charts = chart(results, duration, img) if img is not None else []
    markdown = "\n\n".join(table(v, runs, duration) for v, runs in results.items())
    return {"markdown": markdown, "charts": charts,
            "summary": {v: {r.name: r.percentiles() for r in runs}
                        for v, runs in results.items()},
            "extra": {v: {r.name: r.extra() for r in runs} for v, runs in results.items()},
            "share": {v: {r.name: r.share(0) for r in runs} for v, runs in results.items()},
            "reaction": {r.name: first_quiet(r.arrivals, 0, duration / 3, window=0.5, share=0.05)
                         for r in results["turns slow"]}}


def one_round(ports: list[int], sp: list[dict[str, Any]], duration: float, concurrency: int,
              warmup: int, only: list[str] | None = None) -> list[Run]:
    """Every configuration once (or those of ``only``), in the tables' order (the oracle
    first, always)."""
    def wanted(name: str) -> bool:
        return only is None or name in only

    runs = [measure("oracle (4 fast backends)", "round_robin", ports, sp, duration,
                    concurrency, warmup, only=[1, 2, 3, 4])]
    for strategy in STRATEGIES:
        if wanted(strategy):
            runs.append(measure(f"clientlb {strategy}", strategy, ports, sp, duration,
                                concurrency, warmup))
    for name, strategy in HEDGED:
        if wanted(name):
            runs.append(measure(f"clientlb {name}", strategy, ports, sp, duration,
                                concurrency, warmup, hedging=clientlb.Hedging()))
    for proxy in PROXIES:
        if wanted(proxy):
            runs.append(measure_proxy(proxy, ports, sp, duration, concurrency, warmup))
    return runs


def table(variant: str, runs: list[Run], duration: float) -> str:
    _, oracle_p99, oracle_p999 = runs[0].percentiles()
    head = (f"| {variant}: configuration | requests | p50 ms | p99 ms | p99.9 ms | "
            "p99 ÷ oracle | p99.9 ÷ oracle | to backend 0 | extra requests | "
            "hedges sent / won / probes | failed |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if variant == "turns slow":
        lines[0] += " moved away after |"
        lines[1] += "---:|"
    for r in runs:
        p50, p99, p999 = r.percentiles()
        h = r.hedges
        hedges = f"{h['sent']:,} / {h['won']:,} / {h['probes']:,}" if h.get("requests") else "—"
        line = (f"| {r.name} | {len(r.requests):,} | {ms(p50)} | {ms(p99)} | {ms(p999)} | "
                f"{p99 / oracle_p99:.2f} | {p999 / oracle_p999:.2f} | {r.share(0):.1%} | "
                f"{r.extra():+.1%} | {hedges} | {r.failed()} |")
        if variant == "turns slow":
            if r.name.startswith("oracle"):
                line += " — |"
            else:
                t = first_quiet(r.arrivals, 0, duration / 3, window=0.5, share=0.05)
                line += " never |" if t is None else f" {t:.2f} s |"
        lines.append(line)
    return "\n".join(lines)


def chart(results: dict[str, list[Run]], duration: float, img: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    img.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5), sharey=True)
    for ax, (variant, runs) in zip(axes, results.items(), strict=True):
        names = [r.name.replace("clientlb ", "").replace(" (4 fast backends)", "")
                 for r in runs]
        pct = np.array([r.percentiles() for r in runs]) * 1e3
        x = np.arange(len(runs))
        for k, label in enumerate(("p50", "p99", "p99.9")):
            ax.bar(x + (k - 1) * 0.27, pct[:, k], 0.27, label=label)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"backend 0 {variant}" if variant != "stalls"
                     else "backend 0 stalls 200 ms/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("latency, ms (log)")
    axes[0].legend()
    fig.tight_layout()
    tail = img / "perf_tail_latency.png"
    fig.savefig(tail, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.arange(0.0, duration + 0.25, 0.25)
    for r in results["turns slow"]:
        if r.name.startswith("oracle"):
            continue
        t_all = np.array([t for t, _, _ in r.arrivals if t >= 0])
        t_bad = np.array([t for t, i, _ in r.arrivals if t >= 0 and i == 0])
        total, _ = np.histogram(t_all, bins)
        bad, _ = np.histogram(t_bad, bins)
        ax.plot(bins[:-1], np.divide(bad, np.maximum(total, 1)) * 100, label=r.name)
    ax.axvline(duration / 3, color="grey", linestyle="--", label="backend 0 turns 10× slower")
    ax.set_xlabel("seconds")
    ax.set_ylabel("% of requests to backend 0")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    react = img / "perf_reaction.png"
    fig.savefig(react, dpi=90)
    plt.close(fig)
    return [tail, react]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each configuration this many times, pooled")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--img", type=Path, help="write the PNG charts to this directory")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="measure only this configuration besides the oracle (repeatable): "
                             "a strategy, 'peak_ewma + hedging', 'nginx least_conn', ...")
    args = parser.parse_args()
    if args.smoke:
        run(duration=0.3, concurrency=4, delay=0.005, warmup=4, img=args.img, only=args.only)
    else:
        run(duration=args.duration, concurrency=args.concurrency, img=args.img,
            rounds=args.rounds, only=args.only)


if __name__ == "__main__":
    main()
