"""The guide: its examples run, every Python block in it comes from them, and it builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
#: The pages of this part of the guide (the other chapters are tested by their authors),
#: French pages included (``tests/test_guide_fr.py`` keeps them in step with the English).
PAGES = ["index.md", "index.fr.md", "telemetry.md", "control.md", "cli.md", "reference.md",
         *(f"guide/{p.name}" for p in sorted((DOCS / "guide").glob("*.md")))]


def run_example(name: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=EXAMPLES,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("ok"), result.stdout
    return result.stdout


def test_guide_intro_example_survives_a_lost_server_and_a_lost_zone() -> None:
    out = run_example("guide_intro.py")
    assert "straight to web-1: ConnectError" in out
    assert "through the balancer: {200: 30}" in out
    assert "dns    name=users.internal port=8080 server=None" in out
    assert "consul name=users port=None server=('127.0.0.1', 8500)" in out
    assert "refused: target: port must be 1..65535, got '80800'" in out
    assert "both zones up: {'web-2': 10}" in out
    assert "eu-west-1a down: {'web-2': 1, 'web-3': 19}" in out


def test_guide_basics_example_spreads_adds_and_removes() -> None:
    out = run_example("guide_basics.py")
    assert "spread: {'web-1': 3, 'web-2': 3}" in out
    assert "after add/remove: {'web-2': 3, 'web-3': 3}" in out


def test_guide_strategies_example_shows_each_strategy() -> None:
    out = run_example("guide_strategies.py")
    assert "round robin: {'app-1': 10, 'app-2': 10, 'app-3': 10}" in out
    assert "weights 3:1: {'app-1': 30, 'app-2': 10}" in out
    assert "weights 3:3: {'app-1': 20, 'app-2': 20}" in out
    assert "calls sent to the busy backend: 0" in out
    assert out.count("always reaches") == 2
    assert "custom strategy: {'app-1': 5}" in out


def test_control_api_example_updates_drains_and_deletes() -> None:
    out = run_example("control_api.py")
    assert "strategy now: least_request" in out
    assert "weights 1:3: {'api-1': 10, 'api-2': 30}" in out
    assert "deleted, drained cleanly: True" in out


def test_config_file_example_loads_the_toml_and_shows_an_error() -> None:
    out = run_example("config_file.py")
    assert "catalog: static://127.0.0.1:8001,127.0.0.1:8002 strategy=peak_ewma" in out
    assert "sessions: static://127.0.0.1:8101,127.0.0.1:8102 strategy=ring_hash" in out
    assert "{'created': [], 'updated': ['catalog'], 'deleted': []}" in out
    assert "catalog strategy: least_request" in out
    assert "services.users.strategy: unknown strategy 'fastest'; choose one of" in out


def test_telemetry_example_records_metrics_and_span_events() -> None:
    out = run_example("telemetry_otel.py")
    assert re.search(r"clientlb\.requests\s+\d+\s+.*'clientlb\.outcome': 'gateway_failure'", out)
    assert "span event clientlb.attempt: attempt 1" in out
    assert "span event clientlb.attempt: attempt 2" in out
    assert "span event clientlb.retry: http_503 on 127.0.0.1:" in out
    assert re.search(r"clientlb\.endpoint\.count\s+1\s+.*'ejected'", out)


def test_prometheus_example_exposes_the_metrics_for_scraping() -> None:
    out = run_example("telemetry_prometheus.py")
    assert re.search(r'^clientlb_requests_total\{clientlb_outcome="gateway_failure",'
                     r'clientlb_service="web",error_type="gateway_failure",.*\} 5\.0$', out,
                     flags=re.M)
    assert ('clientlb_endpoint_count{clientlb_endpoint_state="ejected",clientlb_service="web",'
            'server_address="web"} 1.0') in out
    assert re.search(r'^clientlb_retries_total\{clientlb_service="web",server_address="web"\} '
                     r'[1-9]', out, flags=re.M)


#: Every page of docs/, whoever wrote it: no page may hold Python that no test runs.
ALL_PAGES = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
_TESTS_TEXT = "".join(p.read_text() for p in sorted((ROOT / "tests").glob("*.py")))


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_python_block_is_a_snippet_of_a_tested_example(page: str) -> None:
    """No hand-written Python in docs/: each Python block includes a section of a file
    under examples/ that a test runs (its name is quoted in tests/), so every line of
    Python a reader sees has been executed."""
    text = (DOCS / page).read_text()
    fences = re.findall(r"^```(\w+)", text, flags=re.M)
    assert not set(fences) & {"py", "py3", "python3", "pycon", "ipython"}, \
        (page, "write Python blocks as ```python so that this test sees them")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for block in blocks:
        for line in block.strip().splitlines():
            assert re.fullmatch(r'--8<-- "examples/[\w./-]+(:\w+)?"', line), (page, line)
            path, _, section = line.split('"')[1].partition(":")
            source = (ROOT / path).read_text()
            if section:
                assert f"# --8<-- [start:{section}]" in source, (page, line)
                assert f"# --8<-- [end:{section}]" in source, (page, line)
            name = path.removeprefix("examples/")
            assert f'"{name}"' in _TESTS_TEXT, (page, f"no test runs {path}")


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """Both editions: English at the root, French under fr/, in one strict build."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "reference" / "index.html").read_text()
    assert "Registry" in reference and "set_strategy" in reference
    strategies = (tmp_path / "guide" / "strategies" / "index.html").read_text()
    assert "CookieAffinity" in strategies  # the snippets were included, not left as text
    assert (tmp_path / "examples" / "guide_strategies.py").is_file()  # linked from the page
    assert 'href="../../examples/guide_strategies.py"' in strategies
    assert 'href="../../fr/guide/strategies/" hreflang="fr"' in strategies  # language switch

    french = (tmp_path / "fr" / "guide" / "strategies" / "index.html").read_text()
    assert '<html lang="fr"' in french and "Sessions persistantes" in french
    assert "CookieAffinity" in french  # the same snippets, included in the French page too
    assert 'href="../../../examples/guide_strategies.py"' in french
    assert 'href="../../../guide/strategies/" hreflang="en"' in french
    assert 'href="../../strategies/"' in french  # the reference chapter, in the French site
    for chapter in ("introduction", "prerequisites", "load-balancers", "basics", "strategies",
                    "advanced", "use-cases", "open-questions"):
        assert (tmp_path / "fr" / "guide" / chapter / "index.html").is_file(), chapter
    reference = (tmp_path / "fr" / "reference" / "index.html").read_text()
    assert "set_strategy" in reference and "Chapitre en anglais" in reference


def test_the_telemetry_chapter_lists_every_instrument() -> None:
    source = (ROOT / "src" / "clientlb" / "_ops" / "telemetry.py").read_text()
    created = set(re.findall(r'create_\w+\(\s*"(clientlb\.[\w.]+)"', source))
    assert len(created) >= 10
    chapter = (DOCS / "telemetry.md").read_text()
    documented = set(re.findall(r"^\| `(clientlb\.[\w.]+)` \|", chapter, flags=re.M))
    assert created == documented
