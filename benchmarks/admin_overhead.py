"""What the control room costs the request path: picks per second with and without watchers.

Run by hand (needs the admin extra; ``--browser`` also needs Debian's chromium)::

    .venv/bin/python benchmarks/admin_overhead.py [--seconds 3] [--repeat 3] [--browser]

One 10-endpoint static balancer (default strategy, peak_ewma) in a registry; the
main thread calls ``pick().done()`` in a loop for ``--seconds`` and counts. The
cases, side by side in one run and interleaved round by round so that a busy
neighbour on the machine hurts them all alike:

* ``no control room`` — the registry alone;
* ``served, nobody watching`` — ``create_app(registry)`` served by uvicorn in a
  thread of the same process (its sampler reads every balancer once a second);
* ``1 live client (SSE)`` — plus one client reading ``/api/events`` and decoding
  each update, as the dashboard's script does;
* ``5 live clients (SSE)``;
* ``Chromium watching`` (``--browser``) — the real dashboard page open in headless
  Chromium (its renderer runs in other processes, but on the same cores).

Prints picks per second (median of the rounds), the change against ``no control
room``, the CPU time the process's other threads used meanwhile (the control
room's server, sampler and, for SSE, the clients reading: the cost the request
path competes with for the interpreter), and the sampler's own cost per tick.
No timing assertion: the test suite only runs it with ``--smoke``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import threading
import time
from typing import Any

import httpx
import uvicorn

import clientlb
from clientlb.admin import create_app

TARGET = [f"127.0.0.1:{8000 + i}" for i in range(10)]


#: CPU time (ms per second of wall time) the other threads of the process used
#: during each measurement: the control room's server, sampler and clients.
OTHER_CPU: dict[str, list[float]] = {}


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def picks_per_second(lb: clientlb.LoadBalancer, seconds: float, case: str = "") -> float:
    pick = lb.pick
    n = 0
    deadline = time.perf_counter() + seconds
    cpu, mine = _process_cpu(), time.thread_time()
    start = time.perf_counter()
    while True:
        for _ in range(256):
            pick().done()
        n += 256
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    others = (_process_cpu() - cpu) - (time.thread_time() - mine)
    OTHER_CPU.setdefault(case, []).append(1000 * max(0.0, others) / elapsed)
    return n / elapsed


class Served:
    """The control room of ``registry`` on a free loopback port, in a thread."""

    def __init__(self, registry: clientlb.Registry) -> None:
        self.app = create_app(registry)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
            lifespan="on", timeout_graceful_shutdown=1, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"

    def close(self) -> None:
        self.app.state.watchers.end_streams()
        self.server.should_exit = True
        self.thread.join(5)


class Watcher(threading.Thread):
    """Reads the event stream and decodes every update, as the page's script does."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.updates = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=None) as client, \
                client.stream("GET", self.url + "api/events") as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    json.loads(line[6:])
                    self.updates += 1
                if self.stop.is_set():
                    return


def run(seconds: float, repeat: int, browser: bool) -> dict[str, list[float]]:
    registry = clientlb.Registry(telemetry=False)
    lb = registry.create("bench", TARGET)
    for _ in range(1000):  # some history for the charts
        lb.pick().done()
    results: dict[str, list[float]] = {}
    playwright: Any = None
    chromium: Any = None
    if browser:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)

    def watched(served: Served, n: int, case: str) -> float:
        watchers = [Watcher(served.url) for _ in range(n)]
        for w in watchers:
            w.start()
        deadline = time.monotonic() + 5
        while any(w.updates == 0 for w in watchers) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            return picks_per_second(lb, seconds, case)
        finally:
            for w in watchers:
                w.stop.set()

    tick_ms: list[float] = []
    try:
        for _ in range(repeat):  # each round: every case, the server started afresh
            results.setdefault("no control room", []).append(
                picks_per_second(lb, seconds, "no control room"))
            served = Served(registry)
            try:
                results.setdefault("served, nobody watching", []).append(
                    picks_per_second(lb, seconds, "served, nobody watching"))
                results.setdefault("1 live client (SSE)", []).append(
                    watched(served, 1, "1 live client (SSE)"))
                results.setdefault("5 live clients (SSE)", []).append(
                    watched(served, 5, "5 live clients (SSE)"))
                if chromium is not None:
                    page = chromium.new_page()
                    page.goto(served.url)
                    page.wait_for_selector("#live-status.live-on")
                    results.setdefault("Chromium watching the page", []).append(
                        picks_per_second(lb, seconds, "Chromium watching the page"))
                    page.close()
                monitor = served.app.state.monitor
                for _ in range(10):
                    start = time.perf_counter()
                    monitor.tick()
                    tick_ms.append(1000 * (time.perf_counter() - start))
            finally:
                served.close()
    finally:
        if playwright is not None:
            playwright.stop()
        registry.close()
    results["_tick_ms"] = [statistics.median(tick_ms)]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--browser", action="store_true", help="also with headless Chromium")
    parser.add_argument("--smoke", action="store_true", help="a quick run for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.repeat = 0.2, 1
    results = run(args.seconds, args.repeat, args.browser)
    tick = results.pop("_tick_ms")[0]
    base = statistics.median(results["no control room"])
    print(f"picks per second, 1 thread, 10 endpoints, median of {args.repeat} rounds of "
          f"{args.seconds:g} s\n")
    print("| case | picks/s (median) | range of the rounds | vs no control room | "
          "CPU of the other threads |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        value = statistics.median(values)
        change = "" if name == "no control room" else f"{100 * (value / base - 1):+.1f} %"
        other = statistics.median(OTHER_CPU[name])
        print(f"| {name} | {value:,.0f} | {min(values):,.0f}–{max(values):,.0f} | {change} | "
              f"{other:.1f} ms/s |")
    print(f"\nthe sampler: {tick:.2f} ms per tick (one a second) for this balancer")


if __name__ == "__main__":
    main()
