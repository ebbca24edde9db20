"""Discovery: the resolvers behind ``dns://``, ``srv://``, ``consul://`` and ``etcd://``.

Importing this package registers each resolver in
:data:`clientlb._resolvers.base.RESOLVERS` (``clientlb/__init__.py`` does it), so
``LoadBalancer("dns://127.0.0.1:5353/svc.test:8080")`` just works. One module
per resolver; ``_base`` holds the async loop they share (thread or asyncio
task), ``_refresh`` the TTL polling of the DNS resolvers and ``_backoff`` the
timing rules. See docs/discovery.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .._core.errors import ConfigError
from .._core.target import Target
from ._loop import LoopResolver, ResolverStats
from .base import RESOLVERS, Resolver
from .consul import ConsulResolver
from .dns import DNSResolver
from .etcd import EtcdResolver
from .srv import SRVResolver

__all__ = ["ConsulResolver", "DNSResolver", "EtcdResolver", "LoopResolver", "ResolverStats",
           "SRVResolver"]



def option_names(cls: type[Resolver]) -> list[str]:
    """The keyword options a resolver class accepts (its ``__init__`` and its bases')."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                names.add(param.name)
    return sorted(names)


def _factory(cls: type[Resolver]) -> Callable[..., Resolver]:
    """``cls`` with unknown options reported as a ConfigError naming the valid ones."""
    valid = option_names(cls)

    def create(target: Target, **options: Any) -> Resolver:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for {target.scheme}://; valid: "
                              f"{', '.join(valid)}", field="resolver_options")
        return cls(target, **options)

    create.__name__ = create.__qualname__ = cls.__name__
    create.__doc__ = cls.__doc__
    return create


RESOLVERS.setdefault("dns", _factory(DNSResolver))
RESOLVERS.setdefault("srv", _factory(SRVResolver))
RESOLVERS.setdefault("consul", _factory(ConsulResolver))
RESOLVERS.setdefault("etcd", _factory(EtcdResolver))
