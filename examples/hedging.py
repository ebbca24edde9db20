"""Hedged requests: a slow backend no longer sets the tail of the callers' latency.

Three backends on loopback; ``gamma`` takes 300 ms to answer, the others a few ms.
``round_robin`` sends gamma a third of the requests, whatever its latency. Thirty
sequential GETs without hedging: ten of them wait 300 ms. The same thirty with
``clientlb.Hedging``: a request still waiting after 50 ms gets a second attempt on
another backend, and once the balancer has learnt that gamma is slow, a request sent
there is hedged at once (a *probe*) — the caller gets the fast answer, and gamma's own
attempt runs to its end so that the balancer keeps learning its latency.

``max_extra_load=1.0`` lets a 30-request demo hedge every slow request; the default,
5% of the requests (10 hedges per 10 s for a quiet client), is what a service would use.

Run::

    python examples/hedging.py
"""

from __future__ import annotations

import time

import httpx
from _local_backends import start

import clientlb


def run(backends: list[str], hedging: clientlb.Hedging | None) -> None:
    # --8<-- [start:hedging]
    lb = clientlb.LoadBalancer(backends, name="catalog", strategy="round_robin",
                               hedging=hedging)
    client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://catalog")
    # --8<-- [end:hedging]
    with client:
        took = []
        for _ in range(30):
            started = time.monotonic()
            client.get("/item")
            took.append(time.monotonic() - started)
        while lb.in_flight():  # gamma's own attempts, still running: let them teach lb
            time.sleep(0.01)
    slow = sum(1 for t in took if t >= 0.3)
    label = "with hedging" if hedging else "without hedging"
    print(f"{label}: {slow} of 30 requests took 300 ms or more (slowest {max(took):.2f} s)")
    if hedging:
        stats = lb.hedging_statistics()
        gamma = next(row for row in lb.snapshot().endpoints if row.address == backends[2])
        print(f"hedges sent {stats['sent']}, won {stats['won']}, probes {stats['probes']}; "
              f"gamma's latency estimate {gamma.ewma_latency:.2f} s (it served "
              f"{gamma.requests} requests)")
    lb.close()


def policies(addresses: list[str]) -> None:
    """Where a policy applies: every transport on a balancer, one transport, or none."""
    # --8<-- [start:policies]
    lb = clientlb.LoadBalancer(addresses, name="users",
                               hedging=clientlb.Hedging())          # every transport on lb
    transport = clientlb.HTTPTransport(lb)
    fixed = clientlb.HTTPTransport(lb, hedging=clientlb.Hedging(delay=0.05))  # this one
    none = clientlb.HTTPTransport(lb, hedging=False)
    # --8<-- [end:policies]
    print("policies:", *(repr(t).split(" ", 1)[1] for t in (transport, fixed, none)), sep="\n  ")
    for t in (transport, fixed, none):
        t.close()
    lb.close()


def main() -> None:
    servers = start("alpha", "beta", "gamma")
    servers[2].delay = 0.3
    addresses = [s.address for s in servers]
    try:
        policies(addresses)
        run(addresses, None)
        run(addresses, clientlb.Hedging(delay=0.05, max_extra_load=1.0))
    finally:
        for s in servers:
            s.close()
    print("ok")


if __name__ == "__main__":
    main()
