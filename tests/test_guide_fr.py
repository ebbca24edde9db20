"""The French edition of the guide keeps up with the English one.

Every English page of the guide (``docs/index.md``, ``docs/guide/*.md``) has a French
page beside it (``page.fr.md``) with the same headings, the same code blocks (the same
snippets of the same example files), and links to the same pages. Each French page
names, in its front matter, the git blob of the English text it translates
(``source_blob``): an English page changed without its French page fails here, with
the ``git diff`` that shows what to translate. The strict build of both editions is
``test_the_site_builds_in_strict_mode`` in ``test_guide.py``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: The chapters of the book's outline, in its order: what each index must link to.
OUTLINE = ["guide/introduction.md", "guide/prerequisites.md", "guide/load-balancers.md",
           "guide/basics.md", "guide/strategies.md", "guide/advanced.md",
           "guide/use-cases.md", "guide/open-questions.md"]
#: The sections of the outline (in French, as it is written) and their French headings.
OUTLINE_SECTIONS = {
    "guide/introduction.md": [
        "Pourquoi la répartition de charge compte dans le cloud",  # Importance du load balancing
        "Ce que ce guide vous apportera",                          # Objectifs du livre
        "À qui s'adresse ce guide",                                # Public cible
        "Organisation du guide",                                   # Structure du livre
    ],
    "guide/prerequisites.md": ["Administration système", "Cloud computing",
                               "Réseaux et protocoles", "Gestion de serveurs",
                               "Haute disponibilité"],
    "guide/basics.md": ["Choisir un fournisseur", "Créer un équilibreur par API",
                        "En créer un depuis la salle de contrôle", "Router les requêtes",
                        "Ajouter des ressources", "Tests et vérifications"],
}
#: The pages that must have a French page: the index and the guide.
GUIDE = ["index.md", *(f"guide/{p.name}" for p in sorted((DOCS / "guide").glob("*.md"))
                       if not p.name.endswith(".fr.md"))]
#: Every French page, by its English page: the guide's, and any other translated later.
FRENCH = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.fr.md"))
TRANSLATED = sorted({*GUIDE, *(p.removesuffix(".fr.md") + ".md" for p in FRENCH)})
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)")


def french(page: str) -> str:
    return page.removesuffix(".md") + ".fr.md"


def blob_id(page: str) -> str:
    """The page's git blob id (``git hash-object``), abbreviated: ``git diff`` takes it."""
    data = (DOCS / page).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:12]


def body(page: str) -> str:
    return FRONT_MATTER.sub("", (DOCS / page).read_text(), count=1)


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def headings(text: str) -> list[tuple[int, str]]:
    return [(len(m.group(1)), m.group(2).strip())
            for m in re.finditer(r"^(#{1,6}) (.+)$", prose(text), flags=re.M)]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks, with the comments of shell commands left out (they are prose)."""
    blocks = []
    for lang, content in FENCE.findall(text):
        if lang == "console":
            content = re.sub(r"\s+# .*$", "", content, flags=re.M)
        blocks.append((lang, content))
    return blocks


def linked_pages(page: str, text: str) -> set[str]:
    """The pages and files a page links to, resolved from the docs folder, without anchors."""
    here = posixpath.dirname(page)
    return {posixpath.normpath(posixpath.join(here, target.partition("#")[0]))
            for target in LINK.findall(prose(text))
            if "://" not in target and not target.startswith(("#", "mailto:"))}


def test_the_guide_is_the_outline() -> None:
    assert sorted(OUTLINE) == sorted(p for p in GUIDE if p.startswith("guide/"))


@pytest.mark.parametrize("page", GUIDE)
def test_every_english_page_has_its_french_page(page: str) -> None:
    assert (DOCS / french(page)).is_file(), f"docs/{page} has no French page docs/{french(page)}"


@pytest.mark.parametrize("page", TRANSLATED)
def test_every_french_page_translates_an_english_page(page: str) -> None:
    assert (DOCS / page).is_file(), f"docs/{french(page)} has no English page docs/{page}"


@pytest.mark.parametrize("page", TRANSLATED)
def test_the_french_page_translates_the_current_english_page(page: str) -> None:
    match = FRONT_MATTER.match((DOCS / french(page)).read_text())
    recorded = re.search(r"^source_blob: ([0-9a-f]+)", match.group(1) if match else "",
                         flags=re.M)
    assert recorded, f"docs/{french(page)}: no 'source_blob:' line in its front matter"
    now = blob_id(page)
    assert recorded.group(1) == now, (
        f"docs/{page} changed since docs/{french(page)} was written: see what changed with "
        f"'git diff {recorded.group(1)} {now}' (after 'git hash-object -w docs/{page}'), bring "
        f"the French page up to date, then set its source_blob to {now}")


@pytest.mark.parametrize("page", TRANSLATED)
def test_same_headings_structure(page: str) -> None:
    english = [level for level, _ in headings(body(page))]
    assert english == [level for level, _ in headings(body(french(page)))], page


@pytest.mark.parametrize("page", TRANSLATED)
def test_same_code_blocks(page: str) -> None:
    """Same snippets of the same examples, same commands: only the prose is translated."""
    assert code_blocks(body(page)) == code_blocks(body(french(page))), page


@pytest.mark.parametrize("page", TRANSLATED)
def test_same_links(page: str) -> None:
    """The French page links to the pages the English one does (the English-only
    reference chapters included); links to headings are checked by the strict build."""
    assert linked_pages(page, body(page)) == linked_pages(page, body(french(page))), page


@pytest.mark.parametrize("index", ["index.md", "index.fr.md"])
def test_each_index_links_to_every_chapter_of_the_outline(index: str) -> None:
    missing = set(OUTLINE) - linked_pages(index, body(index))
    assert not missing, f"docs/{index} does not link to {sorted(missing)}"


@pytest.mark.parametrize("page", sorted(OUTLINE_SECTIONS))
def test_every_section_of_the_outline_has_its_heading(page: str) -> None:
    titles = [title for _, title in headings(body(french(page)))]
    for section in OUTLINE_SECTIONS[page]:
        assert any(title.replace("\u00a0", " ").replace("\u202f", " ").startswith(section)
                   for title in titles), (page, section, titles)
