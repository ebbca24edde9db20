"""The HTTP chapter's options, run: a retry policy with its budget, and pick keys.

Starts three local HTTP backends (``_local_backends``), one answering 503, and
sends requests through transports built with the chapter's settings: the
retries hide the 503s; each pick key sends one key to one backend.

Run::

    python examples/http_options.py
"""

from __future__ import annotations

import collections

import httpx
import tenacity
from _local_backends import start

import clientlb

backends = start("web-1", "web-2", "web-3")
backends[2].status = 503
addresses = [b.address for b in backends]

# --8<-- [start:retry]
policy = clientlb.RetryPolicy(
    attempts=3,                 # the first try included
    backoff=0.025,              # full-jitter exponential back-off base (or a tenacity wait)
    max_backoff=0.25,
    retry_after_cap=1.0,        # Retry-After honoured up to this many seconds
    statuses={502, 503, 504},
    budget=clientlb.RetryBudget(ratio=0.2, min_retries_per_second=10, ttl=10),
)
lb = clientlb.LoadBalancer(addresses, retry=policy)
fixed = clientlb.RetryPolicy(backoff=tenacity.wait_fixed(0.1))  # any tenacity wait strategy
# --8<-- [end:retry]

with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web") as client:
    statuses = collections.Counter(client.get("/").status_code for _ in range(20))
print(f"retry: statuses seen by the caller {dict(statuses)}")
lb.close()
backends[2].status = 200

# --8<-- [start:hash_keys]
lb = clientlb.LoadBalancer(addresses, strategy="maglev")
by_user = clientlb.HTTPTransport(lb, hash_key=clientlb.hash_by_header("X-User"))
by_ip = clientlb.HTTPTransport(lb, hash_key=clientlb.hash_by_client_ip())  # X-Forwarded-For
by_session = clientlb.HTTPTransport(lb, hash_key=clientlb.hash_by_cookie("session"))
by_path = clientlb.HTTPTransport(lb, hash_key=lambda request: request.url.path)
# --8<-- [end:hash_keys]

with httpx.Client(transport=by_user, base_url="http://web") as client:
    homes = {user: {client.get("/", headers={"X-User": user}).headers["X-Backend"]
                    for _ in range(5)} for user in ("ann", "bob", "cyd")}
print(f"hash_key: backends per user {dict(sorted((u, len(h)) for u, h in homes.items()))}")
for transport in (by_user, by_ip, by_session, by_path):
    transport.close()
lb.close()
for backend in backends:
    backend.close()
print("ok")
