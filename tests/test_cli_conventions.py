"""The clientlb command behaves like the tools around it (issue 14): help without rich,
help for every argument with examples and exit codes, ``-v``, errors printed verbatim,
``config`` judging a file exactly as ``Registry.from_config`` does, a JSON Schema for
editors, and a demo chart with each backend's share."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import clientlb
from clientlb._cli.main import build_parser, main

from .dns_server import ScriptedDNSServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# -- help ---------------------------------------------------------------------------------


def test_help_works_without_rich() -> None:
    """``clientlb --help`` and ``clientlb resolve --help`` need nothing but the standard
    library; a command that draws tables says which extra to install."""
    code = ("import sys; sys.modules['rich'] = None\n"
            "from clientlb._cli.main import main\n"
            "for argv in (['--help'], ['resolve', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code == 0, exc.code\n"
            "print('status', main(['resolve', 'static://127.0.0.1:1']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: clientlb" in result.stdout and "usage: clientlb resolve" in result.stdout
    assert "status 2" in result.stdout
    assert "pip install 'clientlb[cli]'" in result.stderr


def test_every_argument_has_help_and_every_command_examples_and_exit_codes() -> None:
    parser = build_parser()
    missing = []
    for name, sub in {"clientlb": parser, **_subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        if name != "clientlb":
            epilog = sub.epilog or ""
            assert "examples:" in epilog and "exit status:" in epilog, name
            assert f"clientlb {name}" in epilog, name
    assert missing == []
    text = parser.format_help()
    assert "exit status:" in text and "-v, --verbose" in text


def test_verbose_flag_turns_on_debug_logs(capsys: pytest.CaptureFixture[str]) -> None:
    """``-v`` shows clientlb's DEBUG lines (here the resolver's answer), then stops."""
    server = ScriptedDNSServer()
    try:
        assert main(["-v", "resolve", f"dns://{server.server}/web.test:80"]) == 0
        err = capsys.readouterr().err
        assert "DEBUG clientlb.discovery" in err and "publishing 1 endpoint" in err
        assert main(["resolve", f"dns://{server.server}/web.test:80"]) == 0
        assert "DEBUG" not in capsys.readouterr().err
    finally:
        server.close()


# -- output as typed ------------------------------------------------------------------------


def test_brackets_are_printed_verbatim_in_tables_and_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An IPv6 address ``[abcd::1]`` or ``clientlb[grpc]`` is text, never rich markup."""
    assert main(["resolve", "static://[abcd::1]:8002,[::1]:8003"]) == 0
    out = capsys.readouterr().out
    assert "[abcd::1]:8002" in out and "static://[abcd::1]:8002" in out
    assert main(["resolve", "static://[abcd::1]:0"]) == 2
    err = capsys.readouterr().err
    assert "'[abcd::1]:0': port must be 1..65535, got 0" in err


def test_resolve_says_one_endpoint_not_one_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", "static://127.0.0.1:8001"]) == 0
    out = capsys.readouterr().out
    assert "(1 endpoint)" in out


@pytest.fixture
def scripted() -> Iterator[ScriptedDNSServer]:
    server = ScriptedDNSServer()
    yield server
    server.close()


def test_resolve_names_nxdomain_an_empty_answer_and_servfail(
        scripted: ScriptedDNSServer, capsys: pytest.CaptureFixture[str]) -> None:
    scripted.mode = "nxdomain"
    assert main(["resolve", f"dns://{scripted.server}/gone.test:80", "--timeout", "2"]) == 1
    assert "NXDOMAIN: gone.test does not exist" in capsys.readouterr().err
    scripted.mode = "nodata"
    assert main(["resolve", f"dns://{scripted.server}/txt.test:80", "--timeout", "2"]) == 1
    assert "txt.test has no A or AAAA record (the name exists" in capsys.readouterr().err
    assert main(["resolve", f"dns://{scripted.server}/txt.test:80", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["endpoints"] == [] and "has no A or AAAA record" in data["reason"]
    scripted.mode = "servfail"
    assert main(["resolve", f"dns://{scripted.server}/web.test:80", "--timeout", "0.5"]) == 1
    assert "the server answered SERVFAIL" in capsys.readouterr().err


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ('resolver_options = { timout = 2 }\n',
     "error: services.users.resolver_options: unknown option(s) ['timout'] for dns://"),
    ("max_requests = -5\n", "error: services.users.max_requests: must be an integer >= 1"),
    ("[services.users.retry]\nbudget = { ratio = -1 }\n",
     "error: services.users.retry.budget.ratio: "),
])
def test_config_judges_a_file_exactly_as_registry_from_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str) -> None:
    """What Registry.from_config refuses, ``clientlb config`` refuses, at the same path."""
    path = tmp_path / "bad.toml"
    path.write_text('[services.users]\ntarget = "dns:///users.internal:8080"\n' + body)
    assert main(["config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert "retry.budget.retry" not in err
    with pytest.raises(clientlb.ConfigError) as info:
        clientlb.Registry.from_config(path)
    assert err.strip() == f"error: {info.value}"


def _valid(schema: dict[str, Any], value: Any) -> bool:
    """A small JSON Schema check: type, enum, const, anyOf, properties, items, required."""
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if "anyOf" in schema and not any(_valid(s, value) for s in schema["anyOf"]):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    kind = schema.get("type")
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if kind == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return False
    if kind in kinds and not isinstance(value, kinds[kind]):
        return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", ())):
            return False
        for key, item in value.items():
            sub = properties.get(key, schema.get("additionalProperties", True))
            if sub is False or (isinstance(sub, dict) and not _valid(sub, item)):
                return False
    if isinstance(value, list) and "items" in schema:
        return all(_valid(schema["items"], item) for item in value)
    return True


def test_config_schema_describes_the_file_format_for_editors(
        capsys: pytest.CaptureFixture[str]) -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # tomllib arrived in 3.11; tomli is its backport (a core dependency on 3.10)
        import tomli as tomllib

    assert main(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    service = schema["properties"]["services"]["additionalProperties"]
    from clientlb._ops.config import balancer_options

    assert set(service["properties"]) == {"target", *balancer_options()}
    assert service["properties"]["first_resolution_timeout"]["default"] == 5.0
    example = tomllib.loads((EXAMPLES / "clientlb.toml").read_text())
    assert _valid(schema, example)
    misspelt = json.loads(json.dumps(example))
    misspelt["services"]["catalog"]["healthcheck"] = {"path": "/"}
    assert not _valid(schema, misspelt)
    misspelt = json.loads(json.dumps(example))
    misspelt["services"]["catalog"]["retry"]["budget"]["ratoi"] = 0.1
    assert not _valid(schema, misspelt)


# -- demo chart -----------------------------------------------------------------------------


def test_plot_needs_matplotlib_from_the_cli_extra() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # tomllib arrived in 3.11; tomli is its backport (a core dependency on 3.10)
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"]["cli"])


def test_the_demo_chart_shows_latency_and_each_backends_share(tmp_path: Path) -> None:
    from collections import Counter

    from clientlb._cli.demo import Run, figure

    runs = [Run("round_robin", latencies=[0.01, 0.02, 0.2],
                attempts=Counter({"fast-1": 10, "fast-2": 10, "slow": 10})),
            Run("peak_ewma", latencies=[0.01, 0.01, 0.02],
                attempts=Counter({"fast-1": 20, "fast-2": 18, "slow": 2}))]
    fig = figure(runs, ["fast-1", "fast-2", "slow"])
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2
    assert any("latency" in t for t in titles) and any("share" in t for t in titles)
    share = next(ax for ax in fig.axes if "share" in ax.get_title())
    heights = [round(p.get_height()) for p in share.patches]
    assert 50 in heights and 5 in heights  # peak_ewma: 20 of 40 on fast-1, 2 of 40 on slow
    fig.savefig(tmp_path / "chart.png")
