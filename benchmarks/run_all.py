"""Run every scenario benchmark and write the generated section of docs/performance.md.

Run by hand (about 20 minutes; it starts nginx and HAProxy itself)::

    .venv/bin/python benchmarks/run_all.py [--smoke] [--no-overhead]
        [--output docs/performance.md] [--img docs/img]

Runs tail_latency.py, failover.py and scale.py in this process and the overhead scripts
(http_overhead.py in async mode, grpc_overhead.py) as children, then replaces what lies
between ``<!-- run_all:start -->`` and ``<!-- run_all:end -->`` in ``--output`` (appending
the markers at the end the first time) with tables, verdicts against the targets of issue
9, the machine description and the date; the rest of the file is left as it is. Charts
(matplotlib, Agg) go to ``--img``. ``--smoke`` runs everything for a few seconds (CI).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import failover  # noqa: E402
import scale  # noqa: E402
import tail_latency  # noqa: E402
from _scenario import machine  # noqa: E402

START, END = "<!-- run_all:start -->", "<!-- run_all:end -->"
#: tail_latency.py's rounds: percentiles are the median of the rounds' (its doc says why)
TAIL_ROUNDS = 3


def overhead(smoke: bool) -> str:
    out = []
    for script, args in (("http_overhead.py", ["--mode", "async", "--requests", "2000",
                                               "--rounds", "2"]),
                         ("grpc_overhead.py", ["--seconds", "3"])):
        cmd = [sys.executable, str(HERE / script), *(["--smoke"] if smoke else args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        lines: list[str] = []
        for line in done.stdout.splitlines():
            if line.startswith("###"):  # a table's title, as a paragraph of its own
                lines += ["", line.removeprefix("### ") + ":", ""]
            elif line.startswith("|"):
                if lines and lines[-1] and not lines[-1].startswith("|"):
                    lines.append("")
                if lines and lines[-1].startswith("|") and line.startswith("| ") \
                        and "---" not in line and lines[-1].count("|") != line.count("|"):
                    lines.append("")  # a new table follows at once
                lines.append(line)
        out.append(f"`{script} {' '.join(cmd[2:])}`:\n\n" + "\n".join(lines).lstrip("\n"))
    return "\n\n".join(out)


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def tail_verdicts(tail: dict) -> list[str]:  # type: ignore[type-arg]
    """Issue 9 (peak_ewma p99) and issue 19 (hedging: p99.9, p99, extra load) per variant."""
    rows = ["| backend 0 | peak_ewma p99 ÷ oracle (≤ 1.1) | peak_ewma p99.9 ÷ oracle | "
            "+ hedging: p99 ÷ oracle (≤ 1.05) | + hedging: p99.9 ÷ oracle (≤ 1.5) | "
            "+ hedging: extra requests (≤ 5%) | to backend 0, alone → hedged | "
            "round_robin + hedging: p99, p99.9 ÷ oracle |",
            "|---|---|---|---|---|---|---|---|"]
    for variant, by_name in tail["summary"].items():
        _, o99, o999 = next(v for k, v in by_name.items() if k.startswith("oracle"))
        _, p99, p999 = by_name["clientlb peak_ewma"]
        _, h99, h999 = by_name["clientlb peak_ewma + hedging"]
        _, r99, r999 = by_name["clientlb round_robin + hedging"]
        extra = tail["extra"][variant]["clientlb peak_ewma + hedging"]
        share = tail["share"][variant]
        rows.append(
            f"| {variant} | {p99 / o99:.3f} {_met(p99 / o99 <= 1.1)} | {p999 / o999:.2f} | "
            f"{h99 / o99:.3f} {_met(h99 / o99 <= 1.05)} | "
            f"{h999 / o999:.2f} {_met(h999 / o999 <= 1.5)} | "
            f"{extra:+.1%} {_met(extra <= 0.05)} | {share['clientlb peak_ewma']:.1%} → "
            f"{share['clientlb peak_ewma + hedging']:.1%} | {r99 / o99:.2f}, {r999 / o999:.2f} |")
    reaction = tail["reaction"]

    def moved(name: str) -> str:
        t = reaction.get(name)
        return "never" if t is None else f"{t:.2f} s"

    rows.append("")
    rows.append(f"Backend 0 turned slow: peak_ewma moved away after "
                f"{moved('clientlb peak_ewma')} alone, {moved('clientlb peak_ewma + hedging')} "
                "with hedging.")
    return rows


def verdicts(tail: dict, fail: dict, sc: dict) -> list[str]:  # type: ignore[type-arg]
    lines = []
    for variant, by_name in tail["summary"].items():
        oracle = next(v for k, v in by_name.items() if k.startswith("oracle"))[1]
        ours = {k.removeprefix("clientlb "): v[1] for k, v in by_name.items()
                if k.startswith("clientlb ") and "hedging" not in k}
        best = min(ours, key=ours.__getitem__)
        ratio = ours["peak_ewma"] / oracle
        lines.append(f"* Tail latency, backend 0 {variant}: peak_ewma p99 = {ratio:.2f} × the "
                     f"oracle's — target ≤ 1.1 × **{'met' if ratio <= 1.1 else 'not met'}**; "
                     f"lowest p99 among clientlb strategies without hedging: {best}.")
    for fault, by_name in fail["failed"].items():
        ours = {k: v for k, v in by_name.items() if k.startswith("clientlb")}
        total = sum(ours.values())
        lines.append(f"* Failover, backend 0 {fault}: idempotent requests failed through "
                     f"clientlb: {total} (target 0: **{'met' if total == 0 else 'not met'}**).")
    worst = max(row[4] for row in sc["rows"] if row[0] not in ("ring_hash", "maglev"))
    hashing = {row[0]: row[4] for row in sc["rows"] if row[0] in ("ring_hash", "maglev")}
    lines.append(f"* Memory: {worst / 1024:.2f} KiB per endpoint at most for the non-hashing "
                 f"strategies (target ≤ 2 KiB: **{'met' if worst <= 2048 else 'not met'}**); "
                 + ", ".join(f"{k} {v / 1024:.2f} KiB" for k, v in hashing.items())
                 + " with its ring/table.")
    return lines


def section(smoke: bool, with_overhead: bool, img: Path, output: Path) -> str:
    started = time.time()
    header = machine()
    if smoke:
        tail = tail_latency.run(duration=0.3, concurrency=4, delay=0.005, warmup=4, img=img)
        fail = failover.run(duration=0.6, concurrency=4, delay=0.005, warmup=4, timeout=0.2,
                            img=img)
        sc = scale.run(n=500, number=500, repeat=1)
    else:
        tail = tail_latency.run(duration=8.0, img=img, rounds=TAIL_ROUNDS)
        fail = failover.run(duration=8.0, img=img)
        sc = scale.run(n=10_000)
    over = overhead(smoke) if with_overhead else "(not run: `--no-overhead`)"
    minutes = (time.time() - started) / 60

    def rel(p: Path) -> str:
        return os.path.relpath(p, output.parent)

    rounds = "" if smoke else (f", {TAIL_ROUNDS} rounds interleaved (percentiles: the median "
                               "of the rounds'; requests, shares and hedges: all rounds)")
    tail_imgs = "\n\n".join(f"![{p.stem}]({rel(p)})" for p in tail["charts"])
    fail_imgs = "\n\n".join(f"![{p.stem}]({rel(p)})" for p in fail["charts"])
    reaction = ", ".join(f"{k}: {'never' if v is None else f'{v:.2f} s'}"
                         for k, v in tail["reaction"].items() if not k.startswith("oracle"))
    return f"""{START}
<!-- Generated by benchmarks/run_all.py: edit the script, not this section. -->

## Scenarios: tail latency, failover, scale (generated)

Generated by `.venv/bin/python benchmarks/run_all.py{' --smoke' if smoke else ''}` on
{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} in {minutes:.1f} minutes.
Machine: {header}. Figures from one run on a shared machine: compare rows of the same table
(measured minutes apart), not absolute values across tables.

### Verdicts against the targets (issue 9)

{chr(10).join(verdicts(tail, fail, sc))}

### Hedged requests against the targets (issue 19)

`clientlb.Hedging()` (adaptive delay, at most 5% extra requests), tail latencies against
the oracle's in the same run:

{chr(10).join(tail_verdicts(tail))}

### Tail latency

`benchmarks/tail_latency.py` — five backends (20 ms per request, 4 served at once each,
the rest queued), backend 0 10× slower from the start (**slow**), from a third into the run
(**turns slow**), or stalling 200 ms every second (**stalls**); `httpx.AsyncClient` at
concurrency 8 for 8 s per row{rounds}.
Oracle: round robin over the four healthy backends only. "+ hedging": the same strategy with
`clientlb.Hedging()`. "extra requests": what the backends received beyond one per request
(retries, hedges, their losers). "moved away after": time from the slow-down until
backend 0 gets ≤ 5% of requests over the next 0.5 s.

{tail["markdown"]}

Moved away from the backend that turned slow after — {reaction}.

{tail_imgs}

### Failover

`benchmarks/failover.py` — five backends (10 ms per request); a quarter into an 8 s run
backend 0 is killed, answers 503 to 20% of requests, or hangs; concurrency 8, idempotent
GETs, 1 s timeout. "backend 0 out after": time from the fault until it receives ≤ 2% of
requests over the next second ("never" when that does not happen before the end, e.g.
because ejection ends and it is tried again). Extra load: requests received by the
backends per application request, minus one.

{fail["markdown"]}

{fail_imgs}

### Scale

`benchmarks/scale.py` — one balancer of {"500" if smoke else "10,000"}
static endpoints, defaults (outlier detection on); memory measured with `tracemalloc`.

{sc["markdown"]}

### Overhead (HTTP, gRPC)

{over}
{END}"""


def write(output: Path, text: str) -> None:
    doc = output.read_text() if output.exists() else "# Performance\n"
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    output.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds per scenario")
    parser.add_argument("--no-overhead", action="store_true",
                        help="skip http_overhead.py and grpc_overhead.py")
    parser.add_argument("--output", type=Path, default=HERE.parent / "docs" / "performance.md")
    parser.add_argument("--img", type=Path, default=HERE.parent / "docs" / "img")
    args = parser.parse_args()
    text = section(args.smoke, not args.no_overhead, args.img, args.output)
    write(args.output, text)
    print(f"wrote {args.output} and charts in {args.img}")


if __name__ == "__main__":
    main()
