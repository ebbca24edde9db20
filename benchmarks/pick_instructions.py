"""Instructions per pick+done under callgrind, for two source trees side by side.

Run by hand::

    .venv/bin/python benchmarks/pick_instructions.py [--old PATH/src] [--endpoints 1000]

Wall-clock figures on these shared machines move by several times with the load;
instruction counts do not. For each strategy, a worker process builds a balancer over
``--endpoints`` static endpoints (default outlier detection on) and runs N pick+done
under ``valgrind --tool=callgrind``; (I(high) - I(low)) / (high - low) cancels start-up,
imports and the picker build. Both runs first make ``8 × endpoints`` warm-up picks, so
that what is measured is the steady state: one-time work on an endpoint's first
outcome (telemetry builds its attribute sets then) would otherwise be counted in the
difference for the strategies that reach endpoints at random. With ``--old`` the same
runs use another tree's ``clientlb`` (e.g. a checkout of the previous release) for a
before/after table. ``--telemetry off`` passes ``telemetry=False`` where the tree has
that option (every balancer reports to OpenTelemetry by default since issue 14; the
first round had no such default), for a like-for-like comparison of the engine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = ("round_robin", "random", "least_request", "peak_ewma", "ring_hash", "maglev")
HERE = Path(__file__).resolve()


def worker(strategy: str, endpoints: int, n: int) -> None:
    import inspect

    import clientlb

    options = {}
    if os.environ.get("PICK_TELEMETRY") == "off" \
            and "telemetry" in inspect.signature(clientlb.LoadBalancer).parameters:
        options["telemetry"] = False
    lb = clientlb.LoadBalancer([f"10.0.{i // 256}.{i % 256}:80" for i in range(endpoints)],
                               strategy=strategy, **options)
    for key in range(8 * endpoints):  # warm-up (see the module documentation)
        lb.pick(key).done(clientlb.Outcome.SUCCESS, 0.01)
    for key in range(n):
        lb.pick(key).done(clientlb.Outcome.SUCCESS, 0.01)
    lb.close()


def count(src: str, strategy: str, endpoints: int, n: int) -> int:
    # a fixed hash seed: with a random one, dict layouts differ and counts move by ±5%
    env = {**os.environ, "PYTHONPATH": src, "PYTHONHASHSEED": "0"}
    with tempfile.NamedTemporaryFile(suffix=".callgrind") as f:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={f.name}",
                        sys.executable, str(HERE), "--worker", strategy, str(endpoints),
                        str(n)], check=True, capture_output=True, env=env, cwd="/")
        summary = next(line for line in Path(f.name).read_text().splitlines()
                       if line.startswith(("summary:", "totals:")))
    return int(summary.split()[1])


def per_pick(src: str, strategy: str, endpoints: int, low: int, high: int) -> float:
    return (count(src, strategy, endpoints, high) - count(src, strategy, endpoints, low)) \
        / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", help="the src/ directory of the tree to compare with")
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--low", type=int, default=1000)
    parser.add_argument("--high", type=int, default=4000)
    parser.add_argument("--telemetry", choices=("default", "off"), default="default",
                        help="off: telemetry=False where the tree has the option")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        strategy, endpoints, n = args.worker
        worker(strategy, int(endpoints), int(n))
        return
    os.environ["PICK_TELEMETRY"] = args.telemetry
    new = str(HERE.parent.parent / "src")
    head = "| strategy | instructions per pick+done |"
    rule = "|---|---:|"
    if args.old:
        head += " before | after ÷ before |"
        rule += "---:|---:|"
    print(f"{args.endpoints} endpoints, default outlier detection, telemetry "
          f"{args.telemetry}\n\n{head}\n{rule}")
    for strategy in STRATEGIES:
        now = per_pick(new, strategy, args.endpoints, args.low, args.high)
        row = f"| `{strategy}` | {now:,.0f} |"
        if args.old:
            before = per_pick(args.old, strategy, args.endpoints, args.low, args.high)
            row += f" {before:,.0f} | {now / before:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
