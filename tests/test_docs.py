"""The Markdown docs render: no control characters, no broken relative links or anchors.

Control characters got into docs/metrics.md when LaTeX backslashes were read as escapes
("\\text" -> TAB + "ext", "\\frac" -> form feed + "rac"), so every character below 0x20
except the newline is refused, TAB included (no doc uses tabs; indent with spaces).
Links are checked as GitHub renders them: a relative target must exist in the repository,
and a ``#fragment`` must be the slug of a heading (or an explicit anchor) of its file.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_GLOBS = ("docs/*.md", "README.md", "results/_README.md", "benchmarks/perf/README.md", "examples/*/README.md")

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target): text may hold one level of brackets, target balanced parentheses
_INLINE_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"
    r"\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files() -> list[Path]:
    """Every Markdown file the test covers, sorted."""
    found = {p for pattern in DOC_GLOBS for p in REPO.glob(pattern) if p.is_file()}
    return sorted(found)


def control_chars(text: str) -> list[tuple[int, int, str]]:
    """``(line, column, repr)`` of every C0 control character except the newline, and DEL."""
    bad = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        for col, ch in enumerate(line, start=1):
            if (ord(ch) < 0x20 or ord(ch) == 0x7F) and ch != "\n":
                bad.append((lineno, col, repr(ch)))
    return bad


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks, with code spans blanked."""
    out, in_fence = [], False
    for lineno, line in enumerate(text.split("\n"), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append((lineno, _CODE_SPAN.sub("code", line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped,
    spaces to hyphens (duplicates get ``-1``, ``-2``: see :func:`anchors`)."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every ``#fragment`` a file offers: heading slugs (GitHub's duplicate numbering) and
    explicit ``<a name=...>`` / ``id=...`` anchors."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        found.update(_HTML_ANCHOR.findall(line))
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def link_targets(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every inline link, image and reference definition in prose."""
    out = []
    for lineno, line in prose_lines(text):
        out.extend((lineno, m.group(2)) for m in _INLINE_LINK.finditer(line))
        m = _REF_DEF.match(line)
        if m:
            out.append((lineno, m.group(1)))
    return out


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """One message per relative link of ``path`` whose file or anchor does not exist."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for lineno, target in link_targets(text):
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue  # web links are not checked (no network in tests)
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{lineno}: link {target!r}"
        if file_part.startswith("/") or not dest.is_relative_to(root.resolve()):
            problems.append(f"{where} points outside the repository")
        elif not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
        elif fragment and dest.suffix == ".md":
            offered = anchors(dest.read_text(encoding="utf-8"))
            if fragment not in offered:
                near = sorted(a for a in offered if fragment.split("-")[0] in a)[:5]
                problems.append(f"{where}: no heading with anchor #{fragment} in {dest.name} (similar: {near})")
    return problems


# ---------------------------------------------------------------------------- the checker itself


def test_control_chars_found_with_position() -> None:
    text = "ok line\n$\\min(\text{a})$ and \x08ar and \x0crac\x07lpha\r\n"
    found = control_chars(text)
    assert [(line, col) for line, col, _ in found] == [(2, 7), (2, 21), (2, 29), (2, 33), (2, 38)]
    assert [r for _, _, r in found] == ["'\\t'", "'\\x08'", "'\\x0c'", "'\\x07'", "'\\r'"]
    assert control_chars("plain\ntext with $\\text{x}$\n") == []


def test_github_slugs() -> None:
    assert github_slug("Quality and cost metrics") == "quality-and-cost-metrics"
    assert github_slug("`effective_dim_95`, `participation_ratio` and `trajectory_dimensionality`") == (
        "effective_dim_95-participation_ratio-and-trajectory_dimensionality"
    )
    assert github_slug("Image figures (visual diagnostics)") == "image-figures-visual-diagnostics"
    assert github_slug("[Link](x.md) & more: 1.5") == "link--more-15"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n<a name=\"custom\"></a>\n") == {"a", "a-1", "custom"}


def test_broken_links_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Some section\n", encoding="utf-8")
    doc = tmp_path / "docs" / "page.md"
    doc.write_text(
        "# Page\n\n## Local part\n\n"
        "[ok](other.md) [ok](other.md#some-section) [ok](#local-part) ![img](other.md)\n"
        "[web](https://example.com/x#y) `[not a link](missing.md)`\n\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#no-such) [bad local](#nowhere)\n"
        "[up](../../outside.md)\n\n[ref]: missing_ref.md\n",
        encoding="utf-8",
    )
    problems = broken_links(doc, root=tmp_path)
    assert len(problems) == 5, problems
    assert "docs/page.md:11: link 'missing.md': missing.md does not exist" in problems[0]
    assert "no heading with anchor #no-such in other.md" in problems[1]
    assert "no heading with anchor #nowhere in page.md" in problems[2]
    assert "points outside the repository" in problems[3]
    assert "missing_ref.md does not exist" in problems[4]


# ---------------------------------------------------------------------------- the repository's docs


def test_the_docs_are_covered() -> None:
    names = {p.relative_to(REPO).as_posix() for p in doc_files()}
    assert {"README.md", "docs/metrics.md", "results/_README.md", "benchmarks/perf/README.md"} <= names
    assert any(n.startswith("examples/") for n in names)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_control_characters(path: Path) -> None:
    bad = control_chars(path.read_text(encoding="utf-8"))
    shown = ", ".join(f"line {line} col {col}: {r}" for line, col, r in bad[:10])
    assert not bad, f"{path.relative_to(REPO)}: control characters (a lost backslash in LaTeX? a tab?): {shown}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_broken_relative_links(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "\n".join(problems)
