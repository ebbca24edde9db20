"""mkdocs hooks for the guide.

* **Chapters not written yet.** The nav lists every chapter, including those
  other parts of the project write (``http.md``, ``health.md``, ...). Until
  one exists, its nav entry is dropped and links to it are rendered as plain
  text, each with an INFO line, instead of failing ``mkdocs build --strict``.
  Only the names in :data:`PENDING` get this treatment: any other broken
  link still fails the build.
* **Sphinx roles in docstrings.** ``:class:`X``` and ``Example::`` are tidied in
  the generated API reference.
* **The examples are part of the site.** Every file of ``examples/`` is
  copied into the site under ``examples/``, and a relative link written for
  the repository (``../examples/grpc_quickstart.py`` from ``docs/``) is
  rewritten to point at that copy, so the guide links to the very code the
  tests run and ``--strict`` still checks every link.
* **English-only chapters in the French edition.** mkdocs-static-i18n builds
  a page that has no ``.fr.md`` file from its English text under ``/fr/``;
  such a page gets a note, under its title, saying that it is not translated.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.guide")

#: Chapters written by other parts of the project, which may not exist yet.
PENDING = frozenset({"http.md", "grpc.md", "tcp.md", "health.md", "discovery.md",
                     "performance.md", "strategies.md"})
_EXAMPLE_SUFFIXES = frozenset({".py", ".toml", ".json", ".proto"})
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def _prune(items: list[Any], docs: Path) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, list):
                children = _prune(value, docs)
                if children:
                    kept.append({title: children})
                continue
            item_path = value
        else:
            item_path = item
        if isinstance(item_path, str) and "://" not in item_path \
                and not (docs / item_path).is_file():
            log.info("nav: %s is not written yet; left out", item_path)
            continue
        kept.append(item)
    return kept


def on_config(config: Any) -> Any:
    if config.nav:
        config.nav = _prune(config.nav, Path(config.docs_dir))
    return config


# The docstrings are written for Sphinx-style readers (``:class:`~clientlb.Pick```,
# ``Example::``); mkdocstrings renders those roles literally, so tidy the HTML.
_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:[A-Za-z_][\w]*\.)*([A-Za-z_][\w]*)</code>")


def on_post_page(output: str, page: Any, config: Any) -> str:
    output = _ROLE.sub("", output)
    output = _TILDE.sub(r"<code>\1</code>", output)  # ``~a.b.C`` reads as ``C``
    output = output.replace("<p>::</p>", "").replace("::</p>", ":</p>")
    return output


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).parent
    for path in sorted((root / "examples").iterdir()):
        if path.is_file() and path.suffix in _EXAMPLE_SUFFIXES:
            files.append(File(f"examples/{path.name}", src_dir=str(root),
                              dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files


#: The note under the title of a page built from its English text in another edition.
UNTRANSLATED = {
    "fr": '!!! note "Chapitre en anglais"\n'
          "    Ce chapitre de référence n'est pas traduit. Le guide en français y renvoie pour\n"
          "    le détail de chaque option ; le code et les exemples sont les mêmes dans les deux\n"
          "    langues.\n",
}


def _note_untranslated(markdown: str, page: Any, config: Any) -> str:
    edition = config.theme.get("language")  # mkdocs-static-i18n sets it for each edition
    note = UNTRANSLATED.get(edition)
    if note is None or getattr(page.file, "locale", edition) == edition:
        return markdown
    lines = markdown.split("\n")
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
    return "\n".join([*lines[:at], "", note, *lines[at:]])


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = _note_untranslated(markdown, page, config)
    docs = Path(config.docs_dir)
    here = posixpath.dirname(page.file.src_uri)

    def fix(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(here, path))
        if resolved.startswith("../examples/"):
            copy = posixpath.relpath(resolved[3:], here or ".")
            return f"[{text}]({copy}{'#' + anchor if anchor else ''})"
        if resolved in PENDING and not (docs / resolved).is_file():
            log.info("%s: link to %s, not written yet, rendered as text", page.file.src_uri,
                     resolved)
            return text
        return match.group(0)

    return _LINK.sub(fix, markdown)
