"""No module of clientlb touches another module's private attributes (issue 12).

Layers meet at public, typed seams — the health layer sees its balancer only
through ``clientlb._health.view.BalancerView`` — so that one side can change
its internals without breaking the other. This test reads every module under
``src/clientlb/`` with :mod:`ast` and enforces one simple rule:

    ``X._name`` (one leading underscore, not a dunder) is allowed only when
    ``X`` is ``self``, ``cls`` or ``super()``, or when the module itself
    defines ``_name`` (assigns ``self._name``/``cls._name``, defines a method
    or function ``_name``, or has ``_name`` in a class body or ``__slots__``).

The second case lets a module work on its own classes' private state through
another instance (``EndpointSet.diff`` reads ``other._by_address``; ``Pick``
reads its balancer's clock). The rule compares names, not types: ``x._lock``
passes in any module that has a ``_lock`` of its own (``Pick.__init__`` takes
``EndpointLoad._lock`` that way, on purpose: no extra call on ``pick()``).

Importing a private module (``from .._core.balancer import ...``) is fine:
they are the private modules of one package.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "clientlb"

#: Paths (relative to src/clientlb; a trailing "/" means a whole package) exempt
#: from the rule, each with the reason. Keep it short, and drop an entry as soon
#: as its module passes.
ALLOWED: dict[str, str] = {}

#: namedtuple's public API is spelled with an underscore.
_NAMEDTUPLE_API = frozenset({"_asdict", "_field_defaults", "_fields", "_make", "_replace"})


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and len(name) > 1


def _is_own_receiver(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "super")


def _defined_names(tree: ast.AST) -> set[str]:
    """The private names a module defines for its own objects."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and _is_own_receiver(node.value):
            names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                targets: list[ast.expr] = []
                if isinstance(stmt, ast.Assign):
                    targets = stmt.targets
                elif isinstance(stmt, ast.AnnAssign):
                    targets = [stmt.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                if isinstance(stmt, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "__slots__" for t in stmt.targets):
                    names.update(c.value for c in ast.walk(stmt.value)
                                 if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {n for n in names if _is_private(n)}


def foreign_private_accesses(source: str, filename: str = "<src>") -> list[str]:
    """``line: expression`` for every access the rule forbids in ``source``."""
    tree = ast.parse(source, filename)
    own = _defined_names(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                and node.attr not in own and node.attr not in _NAMEDTUPLE_API
                and not _is_own_receiver(node.value)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def _allowed_by(relative: str) -> str | None:
    for entry in ALLOWED:
        if relative == entry or (entry.endswith("/") and relative.startswith(entry)):
            return entry
    return None


def _violations(src: Path = SRC) -> dict[str, list[str]]:
    """Per module (relative path), the accesses the rule forbids."""
    out: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        relative = path.relative_to(src).as_posix()
        found = foreign_private_accesses(path.read_text(encoding="utf-8"), str(path))
        if found:
            out[relative] = found
    return out


def test_no_module_touches_another_modules_private_attributes() -> None:
    """Outside the allow-list, modules meet only at public names (BalancerView for health)."""
    bad = {rel: found for rel, found in _violations().items() if _allowed_by(rel) is None}
    report = "\n".join(f"src/clientlb/{rel}:{line}" for rel, lines in bad.items()
                       for line in lines)
    assert not bad, ("private attributes of another module used (give the owner a public "
                     f"accessor, or add a reasoned entry to ALLOWED):\n{report}")


def test_rule_flags_foreign_access_and_spares_own_state() -> None:
    """The checker itself: lb._lock is flagged; self, cls, super(), dunders and a
    module's own private names are not."""
    source = textwrap.dedent("""
        class Box:
            __slots__ = ("_items",)
            _shared = 0

            def __init__(self, lb):
                self._items = []
                self._lb = lb

            def merge(self, other):
                return self._items + other._items + [Box._shared, type(self).__name__]

            @classmethod
            def make(cls):
                return cls._shared

            def peek(self):
                with self._lb._lock:
                    return super()._peek(), self._lb._states
    """)
    assert foreign_private_accesses(source) == [
        "18: self._lb._lock", "19: self._lb._states"]
