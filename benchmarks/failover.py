"""Failover: a backend killed, answering 503 to 20% of requests, or hanging, mid-run.

Run by hand::

    .venv/bin/python benchmarks/failover.py [--duration 8] [--smoke] [--img DIR]

Five local backends (benchmarks/_scenario.py, 10 ms per request); a quarter into the run
backend 0 is **killed** (listener closed, connections reset), starts answering **503 to
20%** of requests, or **hangs** (reads requests, never answers). An ``httpx.AsyncClient``
at concurrency 8, with a 1 s timeout, sends idempotent GETs through clientlb (defaults:
retries with a 20% budget, outlier detection on), and, for comparison, through nginx
(round robin; by default it tries the next upstream after an error or a timeout, not after
a 503) and HAProxy (leastconn; retries only failed connections by default), both with the
same 1 s timeout towards the backends.

Reported: requests the application saw fail (target 0); the time from the fault until
backend 0 receives at most 2% of the requests over the following second (for a killed
backend the backends cannot see refused connections, so this is not measured); the
requests backend 0 received after the fault; and the extra load from retries — requests
the backends received per application request, minus one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _scenario import Run, first_quiet, free_ports, measure, measure_proxy

FAULTS = ("killed", "503 for 20%", "hangs")
CLIENTS = ("peak_ewma", "round_robin")
PROXIES = ("nginx round robin", "HAProxy leastconn")


def specs(fault: str, delay: float, at: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"delay": delay, "workers": 4} for _ in range(5)]
    if fault == "killed":
        out[0]["die_at"] = at
    elif fault == "hangs":
        out[0]["hang_from"] = at
    else:
        out[0].update(fail_from=at, fail_rate=0.2)
    return out


def run(duration: float = 8.0, concurrency: int = 8, delay: float = 0.01, warmup: int = 100,
        timeout: float = 1.0, img: Path | None = None) -> dict[str, Any]:
    ports = free_ports(5)
    at = duration / 4
    results: dict[str, list[Run]] = {}
    for fault in FAULTS:
        sp = specs(fault, delay, at)
        runs = [measure(f"clientlb {s}", s, ports, sp, duration, concurrency, warmup,
                        timeout=timeout) for s in CLIENTS]
        for proxy in PROXIES:
            runs.append(measure_proxy(proxy, ports, sp, duration, concurrency, warmup,
                                      timeout=timeout))
        results[fault] = runs
        print(table(fault, runs, at) + "\n", flush=True)
    charts = [chart(results, duration, at, img)] if img is not None else []
    summary = {f: {r.name: r.failed() for r in runs} for f, runs in results.items()}
    return {"markdown": "\n\n".join(table(f, runs, at) for f, runs in results.items()),
            "charts": charts, "failed": summary}


def table(fault: str, runs: list[Run], at: float) -> str:
    lines = [f"| backend 0 {fault}: client | requests | failed | backend 0 out after | "
             "to backend 0 after the fault | extra load from retries |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        after = sum(1 for t, i, _ in r.arrivals if i == 0 and t >= at)
        received = sum(1 for t, _, _ in r.arrivals if t >= 0)
        extra = received / max(len(r.requests), 1) - 1
        if fault == "killed":
            out = "n/a"
        else:
            q = first_quiet(r.arrivals, 0, at)
            out = "never" if q is None else f"{q:.2f} s"
        lines.append(f"| {r.name} | {len(r.requests):,} | {r.failed()} | {out} | {after:,} | "
                     f"{extra:+.1%} |")
    return "\n".join(lines)


def chart(results: dict[str, list[Run]], duration: float, at: float, img: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    img.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), sharey=True)
    bins = np.arange(0.0, duration + 0.25, 0.25)
    for ax, (fault, runs) in zip(axes, results.items(), strict=True):
        for r in runs:
            t_all = np.array([t for t, _, _ in r.arrivals if t >= 0])
            t_bad = np.array([t for t, i, _ in r.arrivals if t >= 0 and i == 0])
            total, _ = np.histogram(t_all, bins)
            bad, _ = np.histogram(t_bad, bins)
            ax.plot(bins[:-1], np.divide(bad, np.maximum(total, 1)) * 100, label=r.name)
        ax.axvline(at, color="grey", linestyle="--")
        ax.set_title(f"backend 0 {fault} at {at:g} s")
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of requests received by backend 0")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = img / "perf_failover.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--img", type=Path, help="write the PNG chart to this directory")
    args = parser.parse_args()
    if args.smoke:
        run(duration=0.6, concurrency=4, delay=0.005, warmup=4, timeout=0.2, img=args.img)
    else:
        run(duration=args.duration, img=args.img)


if __name__ == "__main__":
    main()
