"""Secrets never leave clientlb: one redaction rule, every surface searched (issue 13).

A secret is put in every place a user can write one — a target's user-info,
``token=``, ``password=``, ``secret=``, a percent-encoded parameter name
(``tok%65n=``), a percent-encoded value, ``resolver_options`` — and given to
every entry point that takes a target: ``LoadBalancer``, ``Registry.from_config``
(a dict and a TOML file) and the ``clientlb config`` / ``clientlb resolve``
commands. Every surface is then searched for it: exception text and
traceback, ``repr``/``str`` of the balancer, its target, resolver and
snapshot, statistics, every log record, and the CLI's stdout and stderr.
Targets that are valid really run against the Consul emulator, which proves
the token was sent (only in the ``X-Consul-Token`` header) while appearing
nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import logging
import string
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import clientlb
from clientlb._cli.main import main
from clientlb._core.redact import is_secret_key, redact, redact_target

from ._helpers import wait_until
from .consul_emulator import ConsulEmulator

SECRET_ALPHABET = string.ascii_letters + string.digits + "-._~!*$"
# A letter and a digit in every secret: the surfaces legitimately print words made of
# this alphabet (a generated "endpoints_" is in every health_statistics() key) and
# numbers ("0.2191990716337207"), but no run of 10 such characters mixing both.
secrets = st.text(SECRET_ALPHABET, min_size=10, max_size=24).filter(
    lambda s: any(c.isalpha() for c in s) and any(c.isdigit() for c in s))


def _encoded(secret: str) -> str:
    return "".join(f"%{b:02X}" for b in secret.encode())


def _forms(secret: str) -> list[str]:
    return [secret, _encoded(secret), _encoded(secret).lower()]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.name} {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += "".join(traceback.format_exception(record.exc_info[1]))
        self.lines.append(line)


@contextlib.contextmanager
def _logs() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("clientlb")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def _assert_hidden(secret: str, surfaces: dict[str, str]) -> None:
    for where, text in surfaces.items():
        for form in _forms(secret):
            assert form not in text, f"the secret shows in {where}: {text!r}"


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)


@pytest.fixture(scope="module")
def consul() -> Iterator[ConsulEmulator]:
    emulator = ConsulEmulator(tokens={})  # ACLs on, no token known: every query is a 403
    emulator.register("svc", "svc-1", address="127.0.0.1", port=8080)
    yield emulator
    emulator.close()


# Where a secret can be written; {s} is the secret as written, {agent} the emulator.
# (template, the value that reaches the server as the token, or None when it is refused)
PLACES: list[tuple[str, str]] = [
    ("consul://{agent}/svc?token={s}", "token"),
    ("consul://{agent}/svc?tok%65n={s}", "token"),
    ("consul://{agent}/svc?token={e}", "token"),
    ("consul://{agent}/svc?dc=dc1&token={s}&tag=", "token"),
    ("consul://user:{s}@{agent}/svc", "refused"),
    ("consul://user:{e}@{agent}/svc?token={s}", "refused"),
    ("consul://{agent}/svc?password={s}", "refused"),
    ("consul://{agent}/svc?pass%77ord={s}", "refused"),
    ("consul://{agent}/svc?secret={s}", "refused"),
    ("consul://{agent}/svc?token={s}&bogus=1", "refused"),
    ("consul://{agent}/svc?token={s}&token={s}", "refused"),
    ("consul://{agent}/bad name?token={s}", "refused"),
    ("consul://{agent}/svc?token={s}&=x", "refused"),
    ("etcd://root:{s}@{agent}/services", "refused"),
    ("dns://{agent}/users.test:80?token={s}", "refused"),
    ("srv://{agent}/_http._tcp.users.test?tok%65n={s}", "refused"),
    ("static://admin:{s}@10.0.0.1:80", "refused"),
    ("admin:{s}@10.0.0.1:80,10.0.0.2:80", "refused"),
    ("https://admin:{s}@example.com/x", "refused"),
]


def _target(template: str, secret: str, consul: ConsulEmulator) -> str:
    return template.format(s=secret, e=_encoded(secret), agent=consul.address)


def _balancer_surfaces(lb: clientlb.LoadBalancer) -> dict[str, str]:
    out = {"repr(lb)": repr(lb), "str(lb)": str(lb), "lb.target": f"{lb.target!s} {lb.target!r}",
           "snapshot": repr(lb.snapshot()), "resolver": repr(lb.resolver),
           "health statistics": repr(lb.health_statistics())}
    statistics = getattr(lb.resolver, "statistics", None)
    if statistics is not None:
        out["resolver statistics"] = repr(statistics())
    try:
        lb.pick().done()
    except clientlb.ClientLBError as exc:
        out["pick error"] = _exception_text(exc)
    return out


def _run_entry_point(build: Callable[[], Any], consul: ConsulEmulator, secret: str,
                     kind: str) -> dict[str, str]:
    """Build, then collect every surface (the balancer's, or the exception's)."""
    surfaces: dict[str, str] = {}
    sent_before = len(consul.requests)
    obj = None
    try:
        obj = build()
    except clientlb.ConfigError as exc:
        assert kind == "refused", f"a valid target was refused: {exc}"
        surfaces["exception"] = _exception_text(exc)
        return surfaces
    assert kind != "refused", "a target that must be refused was accepted"
    try:
        lbs = [obj] if isinstance(obj, clientlb.LoadBalancer) else [obj[n] for n in obj]
        for lb in lbs:
            # the resolver really ran: the agent refused the token (403) we sent
            wait_until(lambda lb=lb: lb.resolver.statistics().errors >= 1, timeout=10,
                       message="the 403 from the emulator")
            surfaces.update({f"{lb.name}: {k}": v for k, v in _balancer_surfaces(lb).items()})
            surfaces[f"{lb.name}: last error"] = str(lb.resolver.statistics().last_error)
        if isinstance(obj, clientlb.Registry):
            surfaces["registry"] = repr(obj) + repr(obj.snapshots())
    finally:
        obj.close()
    sent = [r["token"] for r in consul.requests[sent_before:]]
    assert secret in sent, "the token was not sent to the agent"
    assert secret not in consul.tokens_in_url, "the token was sent in the URL"
    return surfaces


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(secret=secrets, place=st.sampled_from(PLACES))
def test_a_secret_in_a_target_never_shows_through_loadbalancer(
        consul: ConsulEmulator, secret: str, place: tuple[str, str]) -> None:
    """LoadBalancer: exception, repr, target, snapshot, resolver, statistics, logs."""
    template, kind = place
    target = _target(template, secret, consul)
    assume(secret not in template.format(s="", e="", agent=consul.address))
    with _logs() as logs:
        surfaces = _run_entry_point(lambda: clientlb.LoadBalancer(target, name="svc",
                                                            first_resolution_timeout=0),
                                    consul, secret, kind)
    surfaces["logs"] = "\n".join(logs.lines)
    _assert_hidden(secret, surfaces)


def _toml(target: str, secret_option: str | None) -> str:
    text = f'[services.svc]\ntarget = "{target}"\nfirst_resolution_timeout = 0\n'
    if secret_option is not None:
        text += f'resolver_options = {{ token = "{secret_option}" }}\n'
    return text


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(secret=secrets, place=st.sampled_from(PLACES), as_file=st.booleans(),
       bad_option=st.booleans())
def test_a_secret_in_a_configuration_never_shows_through_registry_from_config(
        consul: ConsulEmulator, secret: str, place: tuple[str, str], as_file: bool,
        bad_option: bool) -> None:
    """Registry.from_config, from a dict or a TOML file, with a token option beside."""
    template, kind = place
    target = _target(template, secret, consul)
    assume(secret not in template.format(s="", e="", agent=consul.address))
    options: dict[str, Any] = {"target": target, "first_resolution_timeout": 0}
    if bad_option:  # a token as a resolver option, next to an unknown one
        options["resolver_options"] = {"token": secret, "tokn": secret}
        kind = "refused"
    with tempfile.TemporaryDirectory() as tmp, _logs() as logs:
        if as_file:
            path = Path(tmp) / "clientlb.toml"
            text = _toml(target, None)
            if bad_option:
                text += f'resolver_options = {{ token = "{secret}", tokn = "{secret}" }}\n'
            path.write_text(text)
            source: Any = path
        else:
            source = {"services": {"svc": options}}
        surfaces = _run_entry_point(
            lambda: clientlb.Registry.from_config(source, telemetry=False), consul, secret,
            kind)
    surfaces["logs"] = "\n".join(logs.lines)
    _assert_hidden(secret, surfaces)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(secret=secrets, place=st.sampled_from(PLACES), command=st.sampled_from(
    ["config", "resolve", "resolve --json"]))
def test_a_secret_never_shows_in_the_cli_output(
        consul: ConsulEmulator, secret: str, place: tuple[str, str], command: str) -> None:
    """``clientlb config FILE`` and ``clientlb resolve TARGET``: stdout and stderr."""
    template, _ = place
    target = _target(template, secret, consul)
    assume(secret not in template.format(s="", e="", agent=consul.address))
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, _logs() as logs, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if command == "config":
            path = Path(tmp) / "clientlb.toml"
            path.write_text(_toml(target, None))
            status = main(["config", str(path)])
        else:
            status = main([*command.split(), target, "--timeout", "0.2"])
    assert status in (0, 1, 2)
    _assert_hidden(secret, {"stdout": out.getvalue(), "stderr": err.getvalue(),
                            "logs": "\n".join(logs.lines)})


# -- the rule itself ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "shown"), [
    ("consul://agent/svc?token=abc&dc=eu", "consul://agent/svc?token=***&dc=eu"),
    ("consul://agent/svc?tok%65n=abc", "consul://agent/svc?tok%65n=***"),
    ("consul://u:p@ss@agent:8500/svc", "consul://***@agent:8500/svc"),
    ("u:pw@10.0.0.1:80", "***@10.0.0.1:80"),
    ("consul://agent/svc?token=a'b\"c#d", "consul://agent/svc?token=***"),
])
def test_redact_target_masks_user_info_and_secret_parameters(text: str, shown: str) -> None:
    """The structural rule, for a target as the user wrote it."""
    assert redact_target(text) == shown


def test_redact_masks_the_same_things_in_free_text() -> None:
    """The textual rule: user-info, key=value, a dict's repr; the rest is untouched."""
    assert redact("GET https://u:pw@h/x?a=1&Password=z failed") == \
        "GET https://***@h/x?a=1&Password=*** failed"
    assert redact("options {'token': 'abc', 'wait': 5}") == "options {'token': '***', 'wait': 5}"
    assert redact("port must be 1..65535, got 0 (in '10.0.0.1:0')") == \
        "port must be 1..65535, got 0 (in '10.0.0.1:0')"
    assert is_secret_key("tok%65n") and is_secret_key("X-Api-Key".lower().replace("-", "_"))
    assert not is_secret_key("passing") and not is_secret_key("dc")


def test_every_clientlb_error_is_redacted_at_construction() -> None:
    """ConfigError, DiscoveryError and NoEndpointAvailable go through the rule."""
    assert "abc" not in str(clientlb.ConfigError("bad ?token=abc", field="target"))
    err = clientlb.DiscoveryError("failed", target="consul://x:abc@h/s")
    assert "abc" not in str(err) and "abc" not in str(err.target)
    assert "abc" not in str(clientlb.NoEndpointAvailable("password=abc", service="s"))
