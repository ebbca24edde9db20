"""The control API: named balancers created, changed and deleted at runtime.

A service talks to many others; :class:`Registry` keeps one
:class:`~clientlb.LoadBalancer` per logical name, so that an admin endpoint,
a configuration reload or a deployment tool can change them while traffic
flows — the "create, configure, delete" of a cloud load balancer's API, in
the process::

    registry = clientlb.Registry()
    users = registry.create("users", "dns:///users.internal:8080")
    registry.update("users", strategy="least_request")   # live: no call is dropped
    registry.delete("users")                             # drains, then closes

``update`` is applied to the live balancer, never by replacing it: the
objects holding it (an ``httpx`` transport, a gRPC channel) keep working,
in-flight calls finish where they are, and load metrics carry over. What can
change live: ``strategy`` (a new picker over the same endpoint states),
``weights``, ``retry``, and every option the balancer has a ``set_<option>``
method for — ``health_check``, ``outlier_detection``, ``panic_threshold``,
``slow_start``, ``local_zone``, ``subset``, ``hedging``; other options (``target``,
``first_resolution_timeout``, ...) raise :class:`~clientlb.ConfigError` naming
the option, instead of being ignored.

Every method is thread-safe. The registry instruments the balancers it
creates with OpenTelemetry (:mod:`clientlb._ops.telemetry`) unless
``telemetry=False``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .._core.balancer import BalancerSnapshot, LoadBalancer
from .._core.closing import Closing
from .._core.errors import ConfigError, strict_arguments
from .._core.target import parse_target
from .._engine.hedging import check as check_hedging
from .._subset.config import subset_option
from .config import load_config, option_value, parse_config, repath
from .telemetry import Telemetry, default_telemetry

__all__ = ["Registry"]

logger = logging.getLogger("clientlb.registry")

#: How long ``delete()`` waits for in-flight calls by default (seconds): long
#: enough for ordinary requests, short enough for a deployment step.
DEFAULT_DRAIN_TIMEOUT = 30.0


@strict_arguments
class Registry(Closing):
    """Named load balancers, created, updated and deleted at runtime (thread-safe).

    Args:
        telemetry: ``True`` (default) instruments every balancer with the
            process-wide :class:`~clientlb.Telemetry` (global OpenTelemetry
            providers; no-op without an SDK), a ``Telemetry`` uses that one,
            ``False`` none.
        defaults: options given to every ``create()`` unless it overrides them
            (e.g. ``{"clock": fake_clock}`` in tests).
    """

    def __init__(self, *, telemetry: Telemetry | bool = True,
                 defaults: Mapping[str, Any] | None = None) -> None:
        if telemetry is True:
            self._telemetry: Telemetry | None = default_telemetry()
        elif telemetry is False:
            self._telemetry = None
        elif isinstance(telemetry, Telemetry):
            self._telemetry = telemetry
        else:
            raise ConfigError(f"must be a bool or a Telemetry, got {telemetry!r}",
                              field="telemetry")
        if defaults is not None and (not isinstance(defaults, Mapping) or not all(
                isinstance(k, str) for k in defaults)):
            raise ConfigError(f"must be a mapping of LoadBalancer options, got {defaults!r}",
                              field="defaults")
        self._defaults = dict(defaults or {})
        self._lock = threading.RLock()
        self._balancers: dict[str, LoadBalancer] = {}
        # name -> (target, options) as created, then as updated: what reload() diffs.
        self._specs: dict[str, tuple[Any, dict[str, Any]]] = {}

    # -- config ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str],
                    **registry_options: Any) -> Registry:
        """A registry with one balancer per ``[services.NAME]`` of a TOML/JSON file or mapping.

        The whole configuration is validated before any balancer is created;
        see :mod:`clientlb._ops.config` for the format.

        Raises:
            ConfigError: with the dotted path of the offending value
                (``services.users.strategy: unknown strategy 'x'; ...``).
        """
        services, telemetry = parse_config(load_config(config))
        registry_options.setdefault("telemetry", telemetry)
        registry = cls(**registry_options)
        try:
            for svc in services:
                registry._create(svc.name, svc.target, svc.options, path=f"services.{svc.name}")
        except BaseException:
            registry.close()
            raise
        return registry

    # -- create / get ---------------------------------------------------------------------

    def create(self, name: str, target: Any, **options: Any) -> LoadBalancer:
        """Create the balancer ``name`` over ``target`` (``LoadBalancer`` keyword options).

        Raises:
            ConfigError: a name already in use, or an invalid option.
        """
        return self._create(name, target, options, path=None)

    def _create(self, name: str, target: Any, options: Mapping[str, Any],
                path: str | None) -> LoadBalancer:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"must be a non-empty string, got {name!r}", field="name")
        kwargs = {**self._defaults, **options}
        with self._lock:
            if name in self._balancers:
                raise ConfigError(f"a balancer named {name!r} already exists; update() or "
                                  "delete() it", field=path or "name")
            # The registry instruments its balancers itself (its own Telemetry or none);
            # telemetry=False in a service's options keeps one out.
            reports = kwargs.pop("telemetry", True)
            if not isinstance(reports, bool):
                raise ConfigError(f"telemetry must be True or False, got {reports!r}",
                                  field=f"{path}.telemetry" if path else "telemetry")
            try:
                lb = LoadBalancer(target, name=name, telemetry=False, **kwargs)
            except ConfigError as exc:
                raise (repath(exc, path) if path else exc) from None
            except TypeError as exc:  # an unknown keyword
                raise ConfigError(str(exc).replace("__init__()", "LoadBalancer()"),
                                  field=path or name) from None
            self._balancers[name] = lb
            self._specs[name] = (target, dict(options))
        if self._telemetry is not None and reports:
            self._telemetry.instrument(lb)
        logger.info("%s: created (%s, %s)", name, lb.target, lb.strategy.name)
        return lb

    def get(self, name: str) -> LoadBalancer:
        """The balancer named ``name``.

        Raises:
            KeyError: no such balancer (the message lists the names that exist).
        """
        with self._lock:
            lb = self._balancers.get(name)
            if lb is None:
                known = ", ".join(sorted(self._balancers)) or "none"
                raise KeyError(f"no balancer named {name!r} (registered: {known})")
            return lb

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._balancers

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._balancers))

    def __len__(self) -> int:
        return len(self._balancers)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        with self._lock:
            return sorted(self._balancers)

    def snapshots(self) -> dict[str, BalancerSnapshot]:
        """Every balancer's :meth:`~clientlb.LoadBalancer.snapshot`, by name (for an admin page)."""
        with self._lock:
            balancers = sorted(self._balancers.items())
        return {name: lb.snapshot() for name, lb in balancers}

    # -- update ---------------------------------------------------------------------------

    def update(self, name: str, **changes: Any) -> LoadBalancer:
        """Apply ``changes`` to the live balancer ``name``; in-flight calls are not dropped.

        ``strategy=`` switches the algorithm (strategy name, table or
        ``Strategy``); ``retry=`` replaces the retry policy (and budget);
        ``weights={"host:port": w}`` overrides endpoint weights;
        ``health_check=``, ``outlier_detection=``, ``panic_threshold=``,
        ``slow_start=``, ``local_zone=``, ``subset=``, ``hedging=`` (objects, tables,
        or ``False`` for off) go to the balancer's ``set_<option>()`` method. Every change is
        validated before any is applied.

        Raises:
            KeyError: no such balancer.
            ConfigError: an invalid value, or an option that cannot change live.
        """
        lb = self.get(name)
        appliers = []
        for key, value in changes.items():
            appliers.append(self._applier(lb, key, value))
        with self._lock:
            for apply in appliers:
                apply()
            spec = self._specs.get(name)
            if spec is not None:
                spec[1].update({k: v for k, v in changes.items() if k != "weights"})
        if changes:
            logger.info("%s: updated %s", name, ", ".join(sorted(changes)))
        return lb

    def _applier(self, lb: LoadBalancer, key: str, value: Any) -> Any:
        if key == "strategy":
            from .._strategies import resolve_strategy

            strategy = resolve_strategy(option_value(key, value, key))
            return lambda: lb.set_strategy(strategy)
        if key == "weights":
            if not isinstance(value, Mapping):
                raise ConfigError(f"must be a mapping of 'host:port' to weight, got {value!r}",
                                  field="weights")
            for address, weight in value.items():
                if weight is not None and (isinstance(weight, bool) or not isinstance(
                        weight, (int, float)) or weight < 0):
                    raise ConfigError(f"weight must be a number >= 0 or None, got {weight!r}",
                                      field=f"weights.{address}")
            def set_weights() -> None:
                for address, weight in value.items():
                    lb.set_weight(address, weight)

            return set_weights
        if key == "subset":
            from .._subset.peers import check_place

            subset = subset_option(value, key)
            check_place(subset)  # an aperture's place is found now, not halfway through
            return lambda: lb.set_subset(subset)
        obj = value if not isinstance(value, (Mapping, bool)) else option_value(key, value, key)
        if key == "hedging":  # checked now: a change is validated before any is applied
            hedging = check_hedging(obj)
            return lambda: lb.set_hedging(hedging)
        setter = getattr(lb, f"set_{key}", None)
        if callable(setter):
            return lambda: setter(obj)
        if key == "retry" and hasattr(lb, "retry_policy"):
            policy_cls = _public("RetryPolicy")
            if obj is not None and (policy_cls is None or not isinstance(obj, policy_cls)):
                raise ConfigError(f"must be a RetryPolicy, a table or None, got {value!r}",
                                  field="retry")
            return lambda: _set_retry(lb, obj)
        raise ConfigError(
            f"{key!r} cannot be changed on a live balancer in this version; delete() and "
            "create() it again, or change strategy, weights or retry", field=key)

    # -- reload ---------------------------------------------------------------------------

    def reload(self, config: Mapping[str, Any] | str | os.PathLike[str], *,
               drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> dict[str, list[str]]:
        """Make the registry match a new configuration, live.

        Services that are new are created, those that are gone are deleted
        (drained, up to ``drain_timeout``), and those that changed are
        updated in place with :meth:`update` — so their clients keep working.
        The whole new configuration is validated, and every change checked to
        be applicable live, before anything is changed: a change that needs a
        new balancer (another target, another ``first_resolution_timeout``)
        raises :class:`~clientlb.ConfigError` naming it, and nothing is applied.

        Returns:
            ``{"created": [...], "updated": [...], "deleted": [...]}`` (names).
        """
        services, _ = parse_config(load_config(config))
        wanted = {svc.name: svc for svc in services}
        plans: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            specs = dict(self._specs)
            current = dict(self._balancers)
        for name, svc in wanted.items():
            if name not in current:
                continue
            old_target, old_options = specs.get(name, (None, {}))
            path = f"services.{name}"
            if _target_text(svc.target) != _target_text(old_target):
                raise ConfigError("cannot change on a live balancer; delete the service and "
                                  "create it under a new name", field=f"{path}.target")
            changes = {k: v for k, v in svc.options.items() if old_options.get(k, _MISSING) != v}
            for key in old_options:
                if key not in svc.options:
                    changes[key] = _default_of(key)
            for key, value in changes.items():
                try:
                    self._applier(current[name], key, value)
                except ConfigError as exc:
                    raise repath(exc, f"{path}.{key}", key) from None
            if changes:
                plans.append((name, changes))
        created = [name for name in wanted if name not in current]
        deleted = [name for name in current if name not in wanted]
        made: list[str] = []
        try:  # new balancers first: if one cannot be built, undo them and change nothing
            for name in created:
                svc = wanted[name]
                self._create(name, svc.target, svc.options, path=f"services.{name}")
                made.append(name)
        except BaseException:
            for name in made:
                self.delete(name, timeout=0)
            raise
        for name, changes in plans:
            self.update(name, **changes)
        for name in deleted:
            self.delete(name, timeout=drain_timeout)
        result = {"created": created, "updated": [n for n, _ in plans], "deleted": deleted}
        logger.info("reloaded: %s", ", ".join(f"{k} {v}" for k, v in result.items() if v)
                    or "no change")
        return result

    # -- delete ---------------------------------------------------------------------------

    def _detach(self, name: str) -> LoadBalancer | None:
        """Take ``name`` out of the registry (and its telemetry); None when absent."""
        with self._lock:
            lb = self._balancers.pop(name, None)
            self._specs.pop(name, None)
        if lb is not None and self._telemetry is not None:
            self._telemetry.uninstrument(lb)
        return lb

    def delete(self, name: str, *, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> bool:
        """Remove ``name``: refuse new picks at once, wait for in-flight calls, close.

        Waits up to ``timeout`` seconds for in-flight calls to finish (they are
        never cut). Returns True when they all finished in time, False when
        some were still running, and False too when no such balancer exists.
        """
        lb = self._detach(name)
        if lb is None:
            return False
        lb.close()
        deadline = time.monotonic() + timeout
        while lb.in_flight() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        drained = lb.in_flight() == 0
        logger.info("%s: deleted (%s)", name, "drained" if drained else
                    f"{lb.in_flight()} calls still in flight after {timeout:g}s")
        return drained

    async def adelete(self, name: str, *, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> bool:
        """:meth:`delete` for asyncio: waits without blocking the event loop."""
        lb = self._detach(name)
        if lb is None:
            return False
        await lb.aclose()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while lb.in_flight() > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return lb.in_flight() == 0

    def _detach_all(self) -> list[LoadBalancer]:
        with self._lock:
            balancers, self._balancers = list(self._balancers.values()), {}
            self._specs = {}
        if self._telemetry is not None:
            for lb in balancers:
                self._telemetry.uninstrument(lb)
        return balancers

    def close(self) -> None:
        """Close every balancer without waiting (in-flight calls still finish)."""
        for lb in self._detach_all():
            lb.close()

    async def aclose(self) -> None:
        """:meth:`close` for asyncio: each balancer's discovery stops on its own loop."""
        for lb in self._detach_all():
            await lb.aclose()


    def __repr__(self) -> str:
        with self._lock:
            names = ", ".join(sorted(self._balancers))
        return f"<Registry [{len(self._balancers)} balancers: {names}]>"


_MISSING = object()


def _target_text(target: Any) -> str:
    """A comparable form of a target (a string, or a list of strings and endpoints)."""
    if target is None:
        return ""
    return str(parse_target(target))


def _default_of(option: str) -> Any:
    """The ``LoadBalancer`` default of an option removed from the configuration."""
    parameter = inspect.signature(LoadBalancer.__init__).parameters.get(option)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def _public(name: str) -> type[Any] | None:
    import clientlb

    cls = getattr(clientlb, name, None)
    return cls if isinstance(cls, type) else None


def _set_retry(lb: LoadBalancer, policy: Any) -> None:
    # The balancer exposes its policy and budget as attributes (see _retry.py);
    # a new policy gets a fresh budget, as a new balancer would.
    setattr(lb, "retry_policy", policy)  # noqa: B010 - present only with the retry layer
    setattr(lb, "retry_budget",  # noqa: B010
            policy.new_budget(lb.clock) if policy is not None else None)
