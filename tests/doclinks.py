"""Check the project's Markdown: every relative link and #fragment resolves, every result file is cited.

Offline and dependency-free (``make lint`` runs it as a script; tests/test_docs.py
imports it). Heading ids follow GitHub's rule for headings: lower case, punctuation
dropped except ``-`` and ``_``, spaces to ``-``, a ``-N`` suffix on repeats.

    python tests/doclinks.py          # prints each problem, exit 1 if any
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
#: The pages a reader opens; benchmarks/results' own Markdown is checked for links too.
PAGES = ("README.md", "SECURITY.md", "docs/*.md", "benchmarks/results/*.md")
#: Where a result file must be cited from (the generated index does not count).
CITING = ("README.md", "docs/*.md")
RESULTS = "benchmarks/results"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _pages(patterns, root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in patterns for p in root.glob(pattern)})


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are examples, not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def heading_ids(page: Path) -> set[str]:
    """The ids (#fragments) GitHub gives the headings of ``page``."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text()).splitlines():
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    """Every link target in ``page``'s prose."""
    return [a or b for a, b in _LINK.findall(_prose(page.read_text()))]


def problems(root: Path = ROOT) -> list[str]:
    """Dead relative links, missing #fragments, and result files no page cites, in the tree at ``root``."""
    out = []
    cited: set[Path] = set()
    citing = set(_pages(CITING, root))
    for page in _pages(PAGES, root):
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto: ...: not checked offline
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / unquote(path)).resolve() if path else page.resolve()
            where = f"{page.relative_to(root)}: ({target})"
            if not dest.exists():
                out.append(f"{where}: {path} does not exist")
                continue
            if fragment and dest.suffix == ".md" and fragment not in heading_ids(dest):
                out.append(f"{where}: {dest.name} has no heading #{fragment}")
            if page in citing:
                cited.add(dest)
    results = (root / RESULTS).resolve()
    cited_stems = {p.with_suffix("").name for p in cited if p.parent == results}
    for f in sorted(results.iterdir()) if results.is_dir() else []:
        if f.name == "README.md" or f.is_dir():
            continue
        stem = f.with_suffix("").name
        if stem not in cited_stems:
            out.append(f"{RESULTS}/{f.name}: no page of {', '.join(CITING)} cites it (or its .md)")
    return out


def main() -> int:
    """Print each problem; exit 1 if there is any."""
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
