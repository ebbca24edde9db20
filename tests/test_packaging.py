"""What ``import clientlb`` costs and exposes, and what the package declares (issue 14)."""

from __future__ import annotations

import subprocess
import sys

import clientlb

#: Top-level packages that ``import clientlb`` must not load: the integrations and
#: discovery load on first use (clientlb/__init__.py, ``_LAZY``).
HEAVY = ("httpx", "httpcore", "h11", "h2", "anyio", "dns", "grpc", "opentelemetry", "rich",
         "starlette")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.strip()


def test_import_clientlb_loads_no_integration_nor_discovery_library() -> None:
    """A fresh interpreter: after ``import clientlb`` none of httpx, httpcore, dnspython,
    grpcio or OpenTelemetry is in sys.modules (they made ``import clientlb`` ~100 ms)."""
    loaded = _run("import sys, clientlb; "
                  "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))").split()
    assert sorted(set(HEAVY) & set(loaded)) == []


def test_lazy_names_load_on_first_use_and_are_the_real_objects() -> None:
    """``clientlb.HTTPTransport`` and ``from clientlb import connect`` import their module
    on first access; an unknown name is still an AttributeError."""
    out = _run("import sys, clientlb\n"
               "from clientlb import connect\n"
               "t = clientlb.HTTPTransport\n"
               "from clientlb._http.transport import HTTPTransport\n"
               "from clientlb._tcp import connect as c2\n"
               "print(t is HTTPTransport, connect is c2, 'httpx' in sys.modules)\n"
               "try:\n    clientlb.HTTPTransprt\nexcept AttributeError as e:\n    print(e)")
    assert out.splitlines() == [
        "True True True", "module 'clientlb' has no attribute 'HTTPTransprt'"]


def test_dir_and_all_list_every_public_name_lazy_ones_included() -> None:
    names = set(dir(clientlb))
    assert set(clientlb.__all__) <= names
    for name in clientlb.__all__:
        assert getattr(clientlb, name) is not None, name


# -- what the package declares ------------------------------------------------------------

from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "clientlb"
#: The standard library of every supported Python (tomllib from 3.11: tomli before).
STDLIB = sys.stdlib_module_names | {"tomllib"}
#: Imported only inside a function that says how to install it when missing.
OPTIONAL = {"matplotlib"}  # clientlb demo --plot
#: Which extra a package of clientlb needs, besides the core dependencies.
EXTRA_OF = {"admin": "admin", "grpc": "grpc", "orca": "grpc", "_cli": "cli"}


def _pyproject() -> dict:  # type: ignore[type-arg]
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports() -> dict[str, set[tuple[str, bool]]]:
    """Third-party module → ``(clientlb package, imported inside a function)`` pairs."""
    import ast

    found: dict[str, set[tuple[str, bool]]] = {}
    for path in SRC.rglob("*.py"):
        package = path.relative_to(SRC).parts[0]
        tree = ast.parse(path.read_text())
        lazy = {id(n) for f in ast.walk(tree)
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in STDLIB and top != "clientlb":
                    found.setdefault(top, set()).add((package, id(node) in lazy))
    return found


def _distributions_of_modules() -> dict[str, set[str]]:
    """Top-level module → installed distributions providing it, from their file lists
    (``packages_distributions()`` misses those without ``top_level.txt`` on 3.10)."""
    from importlib.metadata import distributions

    found: dict[str, set[str]] = {}
    for dist in distributions():
        for file in dist.files or ():
            top = file.parts[0].removesuffix(".py")
            if "." not in top and top != "__pycache__":
                found.setdefault(top, set()).add(dist.metadata["Name"])
    return found


def test_every_package_imported_directly_is_declared() -> None:
    """A module-level import of the core needs a core dependency (httpcore and anyio
    included, not only through httpx), one of admin/, grpc/ or _cli/ a dependency of its
    extra; an import inside a function (an optional feature: gRPC health checks) at
    least an extra."""
    project = _pyproject()["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    every_extra = set().union(*extras.values())
    dists = _distributions_of_modules()
    missing = []
    for module, uses in sorted(_imports().items()):
        if module in OPTIONAL:
            continue
        candidates = {_name(d) for d in dists.get(module, [module])}
        for package, in_function in sorted(uses):
            declared = core | extras.get(EXTRA_OF.get(package, ""), set())
            if in_function:
                declared |= every_extra
            if not candidates & declared:
                missing.append(f"{module} (imported by {package}/)")
    assert missing == []


def test_the_version_has_one_source() -> None:
    """pyproject reads it from clientlb.__version__; the installed metadata agrees."""
    from importlib.metadata import version

    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/clientlb/__init__.py"
    assert version("clientlb") == clientlb.__version__


def test_classifiers_name_each_supported_python() -> None:
    project = _pyproject()["project"]
    assert project["requires-python"] == ">=3.10"
    versions = sorted(c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
                      if c.startswith("Programming Language :: Python :: 3.1"))
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
