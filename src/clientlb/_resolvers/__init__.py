"""Discovery: the resolvers behind ``dns://``, ``srv://``, ``consul://`` and ``etcd://``.

Importing this package registers each resolver in
:data:`clientlb._resolver.RESOLVERS` (``clientlb/__init__.py`` does it), so
``LoadBalancer("dns://127.0.0.1:5353/svc.test:8080")`` just works. One module
per resolver; ``_base`` holds the async loop they share (thread or asyncio
task), ``_refresh`` the TTL polling of the DNS resolvers and ``_backoff`` the
timing rules. See docs/discovery.md.
"""

from __future__ import annotations

from .._resolver import RESOLVERS
from ._base import LoopResolver, ResolverStats
from .consul import ConsulResolver
from .dns import DNSResolver
from .etcd import EtcdResolver
from .srv import SRVResolver

__all__ = ["ConsulResolver", "DNSResolver", "EtcdResolver", "LoopResolver", "ResolverStats",
           "SRVResolver"]

RESOLVERS.setdefault("dns", DNSResolver)
RESOLVERS.setdefault("srv", SRVResolver)
RESOLVERS.setdefault("consul", ConsulResolver)
RESOLVERS.setdefault("etcd", EtcdResolver)
