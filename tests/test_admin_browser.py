"""The control room in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real ``clientlb serve`` process sending synthetic traffic to real backends.

One browser and one ``clientlb serve`` for the module; the tests run in order and
share them (the stopped backend stays stopped). With ``CLIENTLB_SCREENSHOTS=1`` the
tests also write the screenshots of docs/control-room.md to docs/img/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._helpers import wait_until
from ._http_backend import Backend
from .conftest import require_binary

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

ROOT = Path(__file__).resolve().parents[1]
CLIENTLB = str(Path(sys.executable).parent / "clientlb")
TOKEN = "browser-test-token-5f1c2a9e"
SCREENSHOTS = os.environ.get("CLIENTLB_SCREENSHOTS") == "1"
TIMEOUT = 10_000  # ms: what "within seconds" means on a loaded 2-core machine


class Serve:
    """``clientlb serve CONFIG --port 0 --traffic 20`` as a user runs it."""

    def __init__(self, config: Path, log: Path) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CLIENTLB_ADMIN_TOKEN": TOKEN,
               "PYTHONUNBUFFERED": "1"}
        self.log = log
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            [CLIENTLB, "serve", str(config), "--port", "0", "--traffic", "20"],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        line = wait_until(lambda: next((x for x in self.lines if "control room: " in x), None),
                          timeout=20, message="clientlb serve to print its address")
        self.url = line.split("control room: ", 1)[1].strip()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stderr.close()
        return code


@pytest.fixture(scope="module")
def backends() -> Iterator[list[Backend]]:
    backends = [Backend(f"b{i}") for i in range(4)]
    yield backends
    for b in backends:
        b.close()


@pytest.fixture(scope="module")
def serve(backends: list[Backend], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    folder = tmp_path_factory.mktemp("control-room")
    config = folder / "clientlb.toml"
    config.write_text(
        "[services.web]\n"
        f'target = "static://{",".join(b.address for b in backends)}"\n'
        'strategy = "round_robin"\n'
        "[services.web.outlier_detection]\n"
        "consecutive_failures = 3\n"
        "base_ejection_time = 60.0\n")
    server = Serve(config, folder / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium", "/usr/bin/chromium")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def problems() -> list[str]:
    """Console errors and page errors seen in any test (a CSP violation is one); the
    refusals the tests provoke on purpose (400, 401) are not problems."""
    return []


def watch(page: Any, problems: list[str]) -> None:
    def console(message: Any) -> None:
        if message.type == "error" and not any(
                f"status of {code}" in message.text for code in (400, 401)):
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))


@pytest.fixture(scope="module")
def shared_page(browser: Any, serve: Serve, problems: list[str]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 860})
    page = context.new_page()
    watch(page, problems)
    page.set_default_timeout(TIMEOUT)
    yield page
    context.close()


@pytest.fixture
def page(shared_page: Any, serve: Serve) -> Any:
    """The module's page, loaded afresh (no token: it lives in the page's memory only)."""
    shared_page.goto(serve.url)
    expect(shared_page.locator("#live-status")).to_have_text("live")
    return shared_page


def row(page: Any, backend: Backend) -> Any:
    return page.locator(f'#service-web tr[data-address="{backend.address}"]')


def use_token(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#token-form button")
    expect(page.locator("#live-status")).to_have_text("live")


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(ROOT / "docs" / "img" / name), full_page=True)


def test_the_page_shows_every_endpoint_and_its_traffic(page: Any,
                                                        backends: list[Backend]) -> None:
    expect(page.locator("#service-web tbody tr")).to_have_count(4)
    for b in backends:
        expect(row(page, b).locator(".state")).to_have_text("healthy")
        # the synthetic traffic shows as a share and a success rate
        expect(row(page, b).locator(".f-share")).not_to_have_text("–")
        expect(row(page, b).locator(".f-success")).to_have_text("100.0 %")
    expect(page.locator("#service-web .f-strategy")).to_have_text("round_robin")
    expect(page.locator("#service-web .mode")).to_have_text("normal")


def test_a_stopped_backend_turns_unreachable_on_screen_within_seconds(
        page: Any, backends: list[Backend]) -> None:
    """Connect failures take an endpoint out of picks at once (connectivity), before
    outlier detection would count enough of them to eject it."""
    backends[2].close()
    expect(row(page, backends[2]).locator(".state")).to_have_text("unreachable")
    assert "background probe" in str(row(page, backends[2]).locator(".state")
                                     .get_attribute("title"))


def test_a_failing_backend_turns_ejected_on_screen_within_seconds(
        page: Any, backends: list[Backend]) -> None:
    backends[3].status = 503  # answers, but fails: outlier detection's case
    expect(row(page, backends[3]).locator(".state")).to_contain_text("ejected")
    expect(row(page, backends[3]).locator(".state")).to_contain_text("s left")
    expect(row(page, backends[3]).locator(".f-ejections")).to_have_text("1")
    backends[3].status = 200  # still ejected for its base_ejection_time (60 s)


def test_a_change_without_the_token_is_refused(page: Any, serve: Serve,
                                               backends: list[Backend]) -> None:
    button = row(page, backends[0]).locator("button.drain")
    button.click()
    expect(page.locator("#message")).to_contain_text("Enter the admin token first")
    use_token(page, "not-the-token-but-long-enough")
    button.click()
    expect(page.locator("#message")).to_contain_text("this change needs the admin token")
    r = httpx.post(f"{serve.url}api/services/web/endpoints/{backends[0].address}/drain")
    assert r.status_code == 401
    expect(row(page, backends[0]).locator(".state")).to_have_text("healthy")


def test_the_drain_button_drains_and_traffic_stops_reaching_the_backend(
        page: Any, backends: list[Backend]) -> None:
    use_token(page, TOKEN)
    row(page, backends[0]).locator("button.drain").click()
    expect(row(page, backends[0]).locator(".state")).to_have_text("draining")
    expect(page.locator("#message")).to_contain_text("drain " + backends[0].address + ": done")
    drained_at, other_at = backends[0].served(), backends[1].served()
    wait_until(lambda: backends[1].served() >= other_at + 20, timeout=10,
               message="20 more requests at the other backend")
    assert backends[0].served() == drained_at  # counted at the backend: nothing new arrived
    expect(row(page, backends[0]).locator("button.drain")).to_have_text("Undrain")
    screenshot(page, "control-room.png")
    row(page, backends[0]).locator("button.drain").click()
    expect(row(page, backends[0]).locator(".state")).to_have_text("healthy")
    wait_until(lambda: backends[0].served() > drained_at, timeout=10,
               message="traffic back on the undrained backend")


def test_a_bad_weight_shows_the_error_and_a_good_one_applies(
        page: Any, serve: Serve, backends: list[Backend]) -> None:
    use_token(page, TOKEN)
    weight = row(page, backends[1]).locator("input[name=weight]")
    weight.fill("-1")
    row(page, backends[1]).locator(".weight-form button").click()
    expect(page.locator("#message")).to_contain_text(
        f"services.web.weights.{backends[1].address}: weight must be a number 0..1e9")
    expect(weight).to_have_attribute("aria-invalid", "true")
    screenshot(page, "control-room-error.png")
    weight.fill("3")
    row(page, backends[1]).locator(".weight-form button").click()
    expect(page.locator("#message")).to_contain_text("done")
    expect(weight).not_to_have_attribute("aria-invalid", "true")
    service = httpx.get(f"{serve.url}api/services/web").json()
    assert {e["address"]: e["weight"] for e in service["endpoints"]}[backends[1].address] == 3
    weight.fill("1")
    row(page, backends[1]).locator(".weight-form button").click()
    expect(row(page, backends[1]).locator(".f-effective")).to_have_text("1.00")


def test_switch_the_strategy_then_create_and_delete_a_service(
        page: Any, backends: list[Backend]) -> None:
    use_token(page, TOKEN)
    page.select_option("#service-web select[name=strategy]", "least_request")
    page.click("#service-web .strategy-form button")
    expect(page.locator("#service-web .f-strategy")).to_have_text("least_request")
    page.fill("#create-form input[name=name]", "extra")
    page.fill("#create-form input[name=target]", f"static://{backends[0].address}")
    page.click("#create-form button")
    expect(page.locator("#service-extra tbody tr")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#service-extra button.delete")
    expect(page.locator("#service-extra")).to_have_count(0)
    page.select_option("#service-web select[name=strategy]", "round_robin")
    page.click("#service-web .strategy-form button")
    expect(page.locator("#service-web .f-strategy")).to_have_text("round_robin")


def test_it_works_from_the_keyboard(page: Any, backends: list[Backend]) -> None:
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")  # submits the token form
    expect(page.locator("#token-status")).to_contain_text("Token set")
    drain = row(page, backends[0]).locator("button.drain")
    drain.focus()
    page.keyboard.press("Enter")
    expect(row(page, backends[0]).locator(".state")).to_have_text("draining")
    expect(drain).to_be_focused()  # the live update keeps the focus where it was
    page.keyboard.press("Space")
    expect(row(page, backends[0]).locator(".state")).to_have_text("healthy")


def test_it_is_readable_on_a_narrow_screen(browser: Any, serve: Serve,
                                           problems: list[str]) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  device_scale_factor=2)
    page = context.new_page()
    watch(page, problems)
    page.set_default_timeout(TIMEOUT)
    page.goto(serve.url)
    expect(page.locator("#live-status")).to_have_text("live")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways: {width}px wide"
    cell = page.locator("#service-web tbody tr").first.locator("td").first
    assert cell.evaluate("e => getComputedStyle(e).display") == "flex"  # rows are cards
    screenshot(page, "control-room-narrow.png")
    context.close()


def test_no_console_error_nor_csp_violation(problems: list[str]) -> None:
    assert problems == []


def test_serve_logs_each_change_without_secrets_and_stops_on_sigterm(serve: Serve) -> None:
    assert serve.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    log = serve.log.read_text()
    assert TOKEN not in log
    audit = [line for line in log.splitlines() if "clientlb.admin.audit" in line]
    assert any("action='drain web" in line and "result=ok" in line for line in audit)
    assert any("result=refused 401" in line for line in audit)
    assert any("result=refused 400" in line for line in audit)
