"""The ``clientlb`` command: look at a target, probe it, or watch the strategies race.

::

    clientlb resolve dns:///users.internal:8080 --watch
    clientlb check static://10.0.0.1:80,10.0.0.2:80 --http /healthz
    clientlb config clientlb.toml
    clientlb serve clientlb.toml --port 9901       # the control room (clientlb[admin])
    clientlb demo --duration 20 --plot strategies.png

Exit status (as ``curl`` and ``dig`` users expect from a diagnostic tool):
0 when the command did what was asked (for ``check``: at least one endpoint
passed), 1 when the answer is "nothing there" (no endpoint, nothing healthy)
or the system refused (a file, a port), 2 for a bad command line or target,
130 on Ctrl-C. Errors are one line on
stderr, printed as they are (never read as markup), never a traceback.
``--help`` needs only the standard library; the tables need the ``cli`` extra
(``rich``, and matplotlib for ``demo --plot``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint
from .._core.errors import ClientLBError, ConfigError
from .._core.redact import redact, redact_target
from .._core.text import plural

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["main"]

EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CLIError(Exception):
    """A clean, one-line failure with its exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CLIError(message)


_EXIT_STATUS = """\
exit status:
  0    done (check: at least one endpoint passed)
  1    nothing there: no endpoint, nothing healthy, no answer from discovery,
       or the system refused (a file, a port)
  2    bad command line, target or configuration
  130  interrupted (Ctrl-C)"""


def _epilog(*examples: str, status: str = _EXIT_STATUS) -> str:
    lines = "\n".join(f"  {e}" for e in examples)
    return f"examples:\n{lines}\n\n{status}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clientlb", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Client-side load balancing: inspect targets, probe endpoints, validate "
                    "configuration files, run the control room, compare strategies.",
        epilog=_epilog("clientlb resolve dns:///users.internal:8080",
                       "clientlb check static://10.0.0.1:80,10.0.0.2:80 --http /healthz",
                       "clientlb -v config clientlb.toml",
                       "clientlb COMMAND --help     (each command's options and examples)"))
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"clientlb {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log clientlb's debug lines on stderr (discovery answers, "
                        "picks refused, retries)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND", help="one of:")

    def command(name: str, help: str, *examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog=_epilog(*examples),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    target_help = ("a target: static://HOST:PORT,..., dns:///NAME:PORT, "
                   "srv:///_SERVICE._PROTO.NAME, consul:///SERVICE, etcd:///PREFIX, or "
                   "gRPC's dns:NAME:PORT / ipv4:ADDR:PORT")
    p = command("resolve", "list the endpoints of a target",
                "clientlb resolve dns:///users.internal:8080",
                "clientlb resolve srv:///_http._tcp.users.internal --json",
                "clientlb resolve consul:///users?dc=eu --watch --duration 60")
    p.add_argument("target", help=target_help)
    p.add_argument("--watch", action="store_true", help="keep the table live until Ctrl-C")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="wait this long for discovery's first answer (default 5)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="with --watch: stop after S seconds")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("check", "probe every endpoint of a target once",
                "clientlb check dns:///users.internal:8080 --http /healthz",
                "clientlb check static://10.0.0.1:5432,10.0.0.2:5432 --tcp",
                "clientlb check dns:///api.internal:443 --grpc --tls --host api.internal")
    p.add_argument("target", help=target_help)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--http", metavar="PATH", help="HTTP GET PATH (e.g. /healthz)")
    kind.add_argument("--tcp", action="store_true", help="TCP connect (and TLS with --tls)")
    kind.add_argument("--grpc", nargs="?", const="", metavar="SERVICE",
                      help="grpc.health.v1 Check (SERVICE defaults to the whole server)")
    p.add_argument("--tls", action="store_true", help="use TLS, verified against --host")
    p.add_argument("--host", help="logical name: HTTP Host and TLS name (default: the "
                   "target's service name)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="S",
                   help="per probe, and for discovery's first answer (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("config", "validate a TOML/JSON configuration file, as "
                "Registry.from_config would, starting nothing",
                "clientlb config clientlb.toml",
                "clientlb config --schema > clientlb.schema.json   (for your editor)")
    p.add_argument("file", nargs="?",
                   help="a .toml or .json file for clientlb.Registry.from_config")
    p.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of the file format (for editors) and exit")

    p = command("serve", "run the balancers of a configuration file with the control room "
                "(dashboard and HTTP API)",
                "clientlb serve clientlb.toml",
                "CLIENTLB_ADMIN_TOKEN=... clientlb serve clientlb.toml --host 0.0.0.0",
                "clientlb serve clientlb.toml --token-file /run/secrets/admin --port 9901")
    p.add_argument("file", help="a .toml or .json file for clientlb.Registry.from_config")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=9901, help="port (default 9901; 0: any free)")
    p.add_argument("--token-file", metavar="PATH",
                   help="file holding the admin token every change needs (default: the "
                   "CLIENTLB_ADMIN_TOKEN environment variable; without either, read-only)")
    p.add_argument("--read-requires-token", action="store_true",
                   help="require the token to read the API and /metrics too")
    p.add_argument("--traffic", type=float, default=0.0, metavar="N",
                   help="send N synthetic HTTP GET a second through each service (default 0)")
    p.add_argument("--traffic-path", default="/", metavar="PATH",
                   help="the path of the synthetic requests (default /)")

    p = command("demo", "race the strategies over local slow and flaky backends",
                "clientlb demo",
                "clientlb demo --duration 10 --strategies round_robin,peak_ewma",
                "clientlb demo --plot strategies.png   (needs matplotlib: clientlb[cli])")
    p.add_argument("--duration", type=float, default=24.0, metavar="S",
                   help="total seconds of traffic, shared by the strategies (default 24)")
    p.add_argument("--strategies", default="round_robin,random,least_request,peak_ewma",
                   help="comma-separated strategy names")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write a chart: latency percentiles and each backend's share, per "
                   "strategy (matplotlib)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                   help="do not serve the control room while the demo runs")
    p.add_argument("--dashboard-port", type=int, default=9901, metavar="PORT",
                   help="the control room's port on 127.0.0.1 (default 9901; another free "
                   "one when taken)")
    return parser


def _consoles() -> tuple[Console, Console]:
    """The rich consoles for tables, markup off: what is printed is printed as it is."""
    try:
        from rich.console import Console
    except ImportError:
        raise CLIError("this command draws tables with rich: pip install 'clientlb[cli]' "
                       "(or use --json)") from None
    out = Console(highlight=False, markup=False)
    if not out.is_terminal:  # piped or captured: wide enough for the demo's table
        out.width = max(out.width, 120)
    return out, Console(stderr=True, highlight=False, markup=False)


@contextlib.contextmanager
def _verbose(on: bool) -> Iterator[None]:
    """``-v``: clientlb's DEBUG lines on stderr, for the duration of the command."""
    if not on:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("clientlb")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clientlb`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        with _verbose(args.verbose):
            return _run(args)
    except CLIError as exc:
        _error(exc)
        return exc.status
    except ClientLBError as exc:  # ConfigError, NoEndpointAvailable, DiscoveryError
        _error(exc)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_NOTHING
    except OSError as exc:  # a port, a file: the system said no
        _error(exc)
        return EXIT_NOTHING
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args)
    if args.command == "config" and args.schema:
        return config(args, None)
    if getattr(args, "json", False):
        return resolve(args, None) if args.command == "resolve" else check(args, None)
    out, _ = _consoles()
    if args.command == "resolve":
        return resolve(args, out)
    if args.command == "check":
        return check(args, out)
    if args.command == "config":
        return config(args, out)
    from .demo import run_demo

    return run_demo(args, out)


def _error(exc: BaseException) -> None:
    """One line on stderr, verbatim (brackets are text, not markup), redacted (a target
    on the command line may hold a token)."""
    print(f"error: {redact(str(exc))}", file=sys.stderr)


def _print_json(data: object) -> None:
    # Plain print, not rich: a script reading this must never see a wrapped line.
    print(json.dumps(data, indent=2))


# -- resolve ------------------------------------------------------------------------------

def _open(target: str, timeout: float) -> LoadBalancer:
    if timeout < 0:
        raise CLIError(f"--timeout must be >= 0 seconds, got {timeout:g}")
    lb = LoadBalancer(target, strategy="round_robin", first_resolution_timeout=timeout)
    if not lb.wait_ready(timeout):
        cause = lb.discovery_error
        lb.close()
        detail = f": {cause}" if cause else ""
        raise CLIError(f"no answer from discovery for {lb.target} within {timeout:g}s{detail}",
                       EXIT_NOTHING)
    return lb


def endpoints_table(lb: LoadBalancer) -> Table:
    from rich.table import Table

    snap = lb.snapshot().by_address()
    table = Table(title=f"{lb.target}  ({plural(len(lb.endpoints()), 'endpoint')})",
                  title_justify="left")
    for column in ("address", "weight", "priority", "zone", "state", "metadata"):
        table.add_column(column, justify="right" if column in ("weight", "priority") else "left")
    for ep in lb.endpoints():
        row = snap.get(ep.address)
        table.add_row(ep.address, f"{ep.weight:g}", str(ep.priority), ep.zone or "",
                      row.state if row else "", _metadata(ep))
    return table


def _metadata(ep: Endpoint) -> str:
    return ", ".join(f"{k}={v}" for k, v in ep.metadata.items())


def _why_empty(lb: LoadBalancer) -> str:
    """Why discovery gave no endpoint: NXDOMAIN, an empty answer... (the resolver says)."""
    why = lb.resolver.empty_reason
    return f"{lb.target} resolved to no endpoint" + (f": {why}" if why else "")


def resolve(args: argparse.Namespace, out: Console | None) -> int:
    if args.watch and args.json:
        raise CLIError("--json and --watch cannot be combined")
    lb = _open(args.target, args.timeout)
    try:
        if out is None:  # --json
            snap = lb.snapshot().by_address()
            rows = [{"address": ep.address, "host": ep.host, "port": ep.port,
                     "weight": ep.weight, "priority": ep.priority, "zone": ep.zone,
                     "state": snap[ep.address].state if ep.address in snap else None,
                     "metadata": dict(ep.metadata)} for ep in lb.endpoints()]
            data: dict[str, Any] = {"target": str(lb.target), "endpoints": rows}
            if not rows:
                data["reason"] = _why_empty(lb)
            _print_json(data)
            return EXIT_OK if rows else EXIT_NOTHING
        if not args.watch:
            if not lb.endpoints():
                raise CLIError(_why_empty(lb), EXIT_NOTHING)
            out.print(endpoints_table(lb))
            return EXIT_OK
        from rich.live import Live

        deadline = None if args.duration is None else time.monotonic() + args.duration
        with Live(endpoints_table(lb), console=out, refresh_per_second=4) as live:
            version = -1
            while deadline is None or time.monotonic() < deadline:
                current = lb.snapshot()
                if current.version != version:
                    version = current.version
                    live.update(endpoints_table(lb))
                time.sleep(0.25)
        return EXIT_OK
    finally:
        lb.close()


# -- config -------------------------------------------------------------------------------

def config(args: argparse.Namespace, out: Console | None) -> int:
    """Validate a configuration as Registry.from_config does, creating nothing (no
    discovery, no probes); or print the JSON Schema of the format (``--schema``)."""
    if args.schema:
        if args.file:
            raise CLIError("--schema takes no file")
        from .._ops.schema import config_schema

        _print_json(config_schema())
        return EXIT_OK
    if not args.file:
        raise CLIError("config needs a FILE (or --schema)")
    assert out is not None
    from rich.table import Table

    from .._ops.config import load_config, parse_config

    services, telemetry = parse_config(load_config(args.file))
    table = Table(title=f"{args.file}: {plural(len(services), 'service')}, telemetry "
                  f"{'on' if telemetry else 'off'}", title_justify="left")
    for column in ("service", "target", "strategy", "options"):
        table.add_column(column)
    for svc in services:
        target = redact_target(svc.target) if isinstance(svc.target, str) else ", ".join(
            redact_target(e) if isinstance(e, str) else e.address for e in svc.target)
        strategy = svc.options.get("strategy", "peak_ewma")
        others = ", ".join(sorted(k for k in svc.options if k != "strategy"))
        table.add_row(svc.name, target, getattr(strategy, "name", str(strategy)), others)
    out.print(table)
    out.print("configuration OK")
    return EXIT_OK


# -- serve --------------------------------------------------------------------------------

def serve(args: argparse.Namespace) -> int:
    """Run the control room (clientlb.admin) over the balancers of a configuration file."""
    import logging

    try:
        from ..admin._serve import serve as run_serve
    except ImportError:
        raise CLIError("clientlb serve needs the admin extra: pip install "
                       "'clientlb[admin]'") from None
    if args.traffic < 0:
        raise CLIError(f"--traffic must be >= 0 requests a second, got {args.traffic:g}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("clientlb")
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return run_serve(args.file, host=args.host, port=args.port, token_file=args.token_file,
                         read_requires_token=args.read_requires_token, traffic=args.traffic,
                         traffic_path=args.traffic_path, out=sys.stdout)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


# -- check --------------------------------------------------------------------------------

def check(args: argparse.Namespace, out: Console | None) -> int:
    from rich.table import Table

    from .._health.checks import HealthChecker
    from .._health.config import HealthCheck

    if args.timeout <= 0:
        raise CLIError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    lb = _open(args.target, args.timeout)
    try:
        endpoints = lb.endpoints()
        if not endpoints:
            raise CLIError(_why_empty(lb), EXIT_NOTHING)
        if args.http is not None:
            config = HealthCheck(kind="http", path=args.http, tls=args.tls, host=args.host,
                                 timeout=args.timeout)
            what = f"HTTP GET {args.http}"
        elif args.tcp:
            config = HealthCheck(kind="tcp", tls=args.tls, host=args.host, timeout=args.timeout)
            what = "TCP connect" + (" + TLS" if args.tls else "")
        else:
            config = HealthCheck(kind="grpc", grpc_service=args.grpc, tls=args.tls,
                                 host=args.host, timeout=args.timeout)
            what = f"grpc.health.v1 Check({args.grpc!r})"
        # The logical name is the HTTP Host and TLS name; a static list has none,
        # so each endpoint is asked under its own address, as curl would.
        static = lb.target.scheme == "static" and not args.host
        checkers = [HealthChecker(cast(Any, None), config, ep.address if static else lb.name)
                    for ep in endpoints]
        results = asyncio.run(_probe_all(checkers, config, endpoints))
        for checker in checkers:
            checker.close()
    finally:
        lb.close()
    if out is None:  # --json
        _print_json({"target": str(lb.target), "probe": what, "results": [
            {"address": ep.address, "passed": ok, "detail": detail,
             "seconds": round(elapsed, 6)}
            for ep, (ok, detail, elapsed) in zip(endpoints, results, strict=True)]})
        return EXIT_OK if any(ok for ok, _, _ in results) else EXIT_NOTHING
    from rich.text import Text

    table = Table(title=f"{what} on {lb.target}", title_justify="left")
    for column in ("address", "result", "detail", "time"):
        table.add_column(column, justify="right" if column == "time" else "left")
    passed = 0
    for ep, (ok, detail, elapsed) in zip(endpoints, results, strict=True):
        passed += ok
        table.add_row(ep.address, Text("pass", "green") if ok else Text("FAIL", "red"),
                      detail, f"{elapsed * 1000:.1f} ms")
    out.print(table)
    out.print(f"{passed}/{plural(len(endpoints), 'endpoint')} passed")
    return EXIT_OK if passed else EXIT_NOTHING


async def _probe_all(checkers: list[Any], config: Any, endpoints: Sequence[Endpoint]
                     ) -> list[tuple[bool, str, float]]:
    import ssl

    import httpx

    context = checkers[0].ssl_context
    verify: ssl.SSLContext | bool = context if context is not None else True
    async with httpx.AsyncClient(verify=verify, timeout=config.timeout, trust_env=False,
                                 follow_redirects=False) as client:
        limit = asyncio.Semaphore(config.max_concurrency)  # a big pool is not flooded

        async def one(checker: Any, ep: Endpoint) -> tuple[bool, str, float]:
            async with limit:
                return await probe(checker, ep)

        async def probe(checker: Any, ep: Endpoint) -> tuple[bool, str, float]:
            start = time.perf_counter()
            try:
                ok, detail = await asyncio.wait_for(checker.probe(client, ep), config.timeout)
            except asyncio.TimeoutError:
                ok, detail = False, f"timed out after {config.timeout:g}s"
            except Exception as exc:
                ok, detail = False, _describe(exc)
            return bool(ok), str(detail), time.perf_counter() - start

        return list(await asyncio.gather(*(one(c, ep) for c, ep in zip(checkers, endpoints,
                                                                         strict=True))))


def _describe(exc: BaseException) -> str:
    """The root cause in a few words (httpx wraps the OSError two or three times)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, TimeoutError):
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
