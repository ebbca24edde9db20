"""The code cites its design from the repository: docs/architecture.md and its sections."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "clientlb"


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_cites_a_design_file_outside_the_repository() -> None:
    citing = [str(p.relative_to(ROOT)) for p in sources() if "DESIGN.md" in p.read_text()]
    assert citing == []


def test_every_cited_docs_page_and_section_exists() -> None:
    headings: dict[str, set[str]] = {}
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        headings[str(page.relative_to(ROOT))] = {
            m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", text, re.M)}
    missing = []
    for path in sources():
        for m in re.finditer(r'(docs/[\w/.-]+\.md)(?:, "([^"]+)")?', path.read_text()):
            page, section = m.group(1), m.group(2)
            if page not in headings:
                missing.append(f"{path.name}: {page}")
            elif section and section not in headings[page]:
                missing.append(f"{path.name}: {page} § {section}")
    assert missing == []


def test_the_architecture_names_every_layer_package() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(p.name for p in SRC.iterdir() if p.is_dir() and p.name.startswith("_")
                      and p.name != "__pycache__")
    assert [p for p in packages if f"`{p}/`" not in text] == []
