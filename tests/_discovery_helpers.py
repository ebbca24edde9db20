"""Helpers the resolver tests share (consul://, etcd://, dns:// and srv://)."""

from __future__ import annotations

import clientlb


def addresses(lb: clientlb.LoadBalancer) -> set[str]:
    return {ep.address for ep in lb.endpoints()}


def picks_nothing(lb: clientlb.LoadBalancer) -> bool:
    """True once the published picker has nothing to pick (endpoints() may lead it)."""
    try:
        lb.pick().done()
    except clientlb.NoEndpointAvailable:
        return True
    return False
