"""What telemetry costs per call: ``pick()`` + ``done()`` with and without it.

Run by hand (needs the dev extra for the OpenTelemetry SDK)::

    .venv/bin/python benchmarks/telemetry_overhead.py [--n 200000] [--repeat 5]

Cases, on a 10-endpoint static target with the default strategy:

* ``bare`` — not instrumented (``telemetry=False``);
* ``api (no SDK)`` — the default (every balancer reports through the global providers),
  no SDK installed: the API's no-op instruments;
* ``sdk metrics`` — an SDK ``MeterProvider`` with a (never collected) reader: every
  outcome is aggregated for real;
* ``sdk, durations=False`` — the same without the duration histogram;
* ``sdk + span`` — the same inside recording spans (a new one every 64 calls, to stay
  under the SDK's 128-event limit): one span event per attempt. The cost of the spans
  themselves (measured alone) is subtracted.

Prints the best of ``--repeat`` runs in nanoseconds per pick+done and the
overhead over ``bare``. No timing assertion: CI only runs it with ``--smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import clientlb

TARGET = [f"127.0.0.1:{8000 + i}" for i in range(10)]


BLOCK = 64


def per_call(lb: clientlb.LoadBalancer | None, n: int, repeat: int,
             around: Callable[[], contextlib.AbstractContextManager[object]]) -> float:
    """Best-of-``repeat`` nanoseconds per pick+done, ``around`` each block of 64 calls."""
    best = float("inf")
    blocks = max(1, n // BLOCK)
    inner = range(BLOCK)
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(blocks):
            with around():
                if lb is not None:
                    pick = lb.pick
                    for _ in inner:
                        pick().done()
        best = min(best, (time.perf_counter_ns() - start) / (blocks * BLOCK))
    return best


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a few thousand calls, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.repeat = 2000, 1

    tracer = TracerProvider().get_tracer("bench")

    def span() -> contextlib.AbstractContextManager[object]:
        return tracer.start_as_current_span("request")

    cases: list[tuple[str, clientlb.LoadBalancer, Callable[[], contextlib.AbstractContextManager[
        object]]]] = []
    bare = clientlb.LoadBalancer(TARGET, outlier_detection=None, telemetry=False)
    cases.append(("bare", bare, nothing))
    api = clientlb.LoadBalancer(TARGET, outlier_detection=None)  # on by default: global
    cases.append(("api (no SDK)", api, nothing))                 # providers, the API no-op
    sdk = clientlb.LoadBalancer(TARGET, outlier_detection=None)
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    clientlb.Telemetry(meter_provider=provider).instrument(sdk)
    cases.append(("sdk metrics", sdk, nothing))
    lean = clientlb.LoadBalancer(TARGET, outlier_detection=None)
    clientlb.Telemetry(meter_provider=provider, durations=False).instrument(lean)
    cases.append(("sdk, durations=False", lean, nothing))
    cases.append(("sdk + span", sdk, span))

    span_alone = per_call(None, args.n, args.repeat, span)
    base = None
    print(f"{'case':<22} {'ns/call':>9} {'overhead':>9}")
    for name, lb, around in cases:
        ns = per_call(lb, args.n, args.repeat, around)
        if around is span:
            ns -= span_alone
        base = ns if base is None else base
        print(f"{name:<22} {ns:>9.0f} {ns - base:>+9.0f}")
    for _, lb, _ in cases:
        lb.close()


if __name__ == "__main__":
    main()
