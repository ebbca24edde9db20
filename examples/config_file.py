"""Balancers from a configuration file, and what a mistake in it looks like.

Run: python examples/config_file.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import clientlb

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (a dependency of clientlb there)
    import tomli as tomllib

here = Path(__file__).parent

# --8<-- [start:load]
registry = clientlb.Registry.from_config(here / "clientlb.toml")
for name in registry.names():
    lb = registry.get(name)
    print(f"{name}: {lb.target} strategy={lb.strategy.name} "
          f"endpoints={[e.address for e in lb.endpoints()]}")
registry.close()
# --8<-- [end:load]

# --8<-- [start:reload]
registry = clientlb.Registry.from_config(here / "clientlb.toml")
catalog = registry.get("catalog")
edited = (here / "clientlb.toml").read_text().replace(
    'strategy = "peak_ewma"', 'strategy = "least_request"')    # an operator edits the file
print(registry.reload(tomllib.loads(edited)))  # or registry.reload(path) after saving it
# {'created': [], 'updated': ['catalog'], 'deleted': []}
assert registry.get("catalog") is catalog      # the same balancer, changed in place
print("catalog strategy:", catalog.strategy.name)
registry.close()
# --8<-- [end:reload]

# --8<-- [start:errors]
try:
    clientlb.Registry.from_config({"services": {"users": {
        "target": "dns:///users.internal:8080",
        "strategy": "fastest",
    }}})
except clientlb.ConfigError as exc:
    print(exc)
# services.users.strategy: unknown strategy 'fastest'; choose one of round_robin, ...
# --8<-- [end:errors]
print("ok")
