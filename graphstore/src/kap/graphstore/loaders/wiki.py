"""Loader for wiki pages: Markdown (`.md`, `.markdown`) or HTML (`.html`, `.htm`), one page a file.

A page's title is its first `# H1` (Markdown) or its `<title>`, else its first `<h1>` (HTML),
else the file name as a page name (`Some_Page.md` -> "Some Page"). Its text is the readable
text: Markdown without heading markers and link syntax (link text kept, emphasis left as
written), HTML without tags, scripts and styles. Its links are the pages it points to:
`[[Page]]`/`[[Page|label]]` wiki links, Markdown `[label](Target)` and `<a href>` to relative
page names (no scheme, no host, not a bare #anchor), URL-decoded and normalised the same way as
file names, so a link names the title of the page it points to. A directory loads every page
under it in sorted order, skipping hidden files and folders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kap.graphstore.loaders._common import read_text, require_text
from kap.graphstore.records import LoadResult, SourceDocument
from kap.platform.errors import LoaderError

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
SUFFIXES = MARKDOWN_SUFFIXES | HTML_SUFFIXES
_PAGE_SUFFIX = re.compile(r"\.(?:html?|md|markdown)$", re.IGNORECASE)

# Every quantifier is bounded and no pattern crosses a newline, so a 50 MB page of unmatched
# brackets costs a bounded scan per character, never a quadratic backtrack.
_WIKI = r"\[\[(?P<wtarget>[^\[\]|\n]{1,255})(?:\|(?P<wlabel>[^\[\]\n]{0,1000}))?\]\]"
_IMAGE = r"!\[(?P<alt>[^\[\]\n]{0,1000})\]\([^()\n]{0,2000}\)"
_INLINE = (
    r"\[(?P<label>[^\[\]\n]{0,1000})\]\([ \t]*"
    r"(?:<(?P<angle>[^<>\n]{0,2000})>|(?P<href>[^\s()]{0,2000}))"
    r"(?:[ \t]+(?:\"[^\"\n]{0,1000}\"|'[^'\n]{0,1000}'))?[ \t]*\)"
)
_REFERENCE = r"\[(?P<rlabel>[^\[\]\n]{1,1000})\]\[(?P<ref>[^\[\]\n]{0,1000})\]"
_AUTOLINK = r"<(?P<url>[A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]{1,2000})>"
_MD_INLINE = re.compile("|".join((_WIKI, _IMAGE, _INLINE, _REFERENCE, _AUTOLINK)))
_WIKI_ONLY = re.compile(_WIKI)
_DEFINITION = re.compile(r" {0,3}\[([^\[\]\n]{1,1000})\]:[ \t]*<?([^\s<>]{1,2000})>?.*")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SPACES = re.compile(r"\s+")


def load(path: Path) -> LoadResult:
    if not path.is_dir():
        return LoadResult(documents=[load_page(path)])
    files = pages_under(path)
    if not files:
        raise LoaderError(f"{path}: no records (no .md/.markdown/.html/.htm files under it)")
    return LoadResult(documents=[load_page(file) for file in files])


def pages_under(root: Path) -> list[Path]:
    """Every page file under `root`, hidden ones skipped, sorted by relative path."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):  # does not follow directory symlinks: no cycles
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(folder, name)
            for name in names
            if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_page(path: Path) -> SourceDocument:
    text = read_text(path)
    suffix = path.suffix.lower()
    is_html = suffix in HTML_SUFFIXES or (
        suffix not in MARKDOWN_SUFFIXES and re.match(r"\s*<", text) is not None
    )
    title, body, links = parse_html(text) if is_html else parse_markdown(text)
    where = str(path)
    title = require_text(title or page_name(unquote(path.name)), "title", where)
    return SourceDocument(
        title=title,
        text=require_text(body, "text", where),
        source=where,
        links=tuple(link for link in dict.fromkeys(links) if link != title),
    )


def page_name(name: str) -> str | None:
    """`Some_Page.html` / `Some_Page.md` / `Some_Page` -> "Some Page"; None when nothing is left."""
    name = _PAGE_SUFFIX.sub("", name.strip()).replace("_", " ").strip()
    return name or None


def page_from_href(href: str) -> str | None:
    """The page a relative link names, or None for URLs, anchors, mailto: and other schemes."""
    parts = urlsplit(href.strip())
    if parts.scheme or parts.netloc or not parts.path:
        return None
    segment = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if segment in {"", ".", ".."}:
        return None
    return page_name(unquote(segment))  # split before decoding: "AC%2FDC" is one page


def page_from_wikilink(target: str) -> str | None:
    return page_name(target.split("#", 1)[0])  # [[Page#Section]] -> Page; [[#Section]] -> None


# ---- Markdown ----


def parse_markdown(text: str) -> tuple[str | None, str, list[str]]:
    """(first H1 or None, readable text, link targets) of a Markdown page."""
    definitions: dict[str, str] = {}
    blocks: list[tuple[bool, list[str]]] = []  # (is code, lines), code left as written
    title: str | None = None
    fence: str | None = None
    for line in text.split("\n"):
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
                continue
            _append(blocks, line, is_code=True)
            continue
        if opening := _FENCE.match(line):
            fence = opening.group(1)
            continue
        if definition := _DEFINITION.fullmatch(line):
            definitions.setdefault(definition.group(1).casefold(), definition.group(2))
            continue
        if heading := _HEADING.fullmatch(line):
            line = _heading_text(heading.group(2) or "")
            if title is None and len(heading.group(1)) == 1 and line.strip():
                title = line.strip()
        _append(blocks, line, is_code=False)
    links: list[str] = []
    replace = _md_replacer(definitions, links)
    body = "\n".join(
        "\n".join(lines) if is_code else _MD_INLINE.sub(replace, "\n".join(lines))
        for is_code, lines in blocks
    ).strip()
    if title is not None:
        title = _MD_INLINE.sub(_md_replacer(definitions, []), title)
    return title, body, links


def _heading_text(text: str) -> str:
    """Heading text without an optional closing run of #s ("Title ##" -> "Title")."""
    text = text.rstrip()
    bare = text.rstrip("#")
    # Done with rstrip, not a regex tail: a lazy `(.*?)(#+)?` tail is quadratic on long lines.
    if bare != text and (not bare or bare[-1] in " \t"):
        text = bare.rstrip()
    return text


def _append(blocks: list[tuple[bool, list[str]]], line: str, *, is_code: bool) -> None:
    if not blocks or blocks[-1][0] != is_code:
        blocks.append((is_code, []))
    blocks[-1][1].append(line)


def _md_replacer(definitions: dict[str, str], links: list[str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        if (target := match.group("wtarget")) is not None:
            _add(links, page_from_wikilink(target))
            label = match.group("wlabel")
            return label if label else target
        if (alt := match.group("alt")) is not None:
            return alt  # an image is not a link to a page
        if (label := match.group("label")) is not None:
            _add(links, page_from_href(match.group("angle") or match.group("href") or ""))
            return label
        if (label := match.group("rlabel")) is not None:
            ref = (match.group("ref") or label).casefold()
            if ref not in definitions:
                return match.group()  # "[a][b]" with no definition is just text
            _add(links, page_from_href(definitions[ref]))
            return label
        return str(match.group("url"))

    return replace


def _add(links: list[str], page: str | None) -> None:
    if page is not None:
        links.append(page)


# ---- HTML ----

_SKIP = frozenset({"script", "style", "noscript", "template"})
_BLOCK = frozenset(
    {
        *("address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt"),
        *("figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header"),
        *("hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul"),
    }
)


class _PageParser(HTMLParser):
    """Collects readable text, the <title>, the first <h1> and the hrefs of <a> tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.h1: list[str] = []
        self.hrefs: list[str] = []
        self._skip = 0
        self._in_title = False
        self._h1_state = 0  # 0 before the first <h1>, 1 inside it, 2 after it

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "a":
            self.hrefs.extend(value for key, value in attrs if key == "href" and value)
        if tag == "h1" and self._h1_state == 0:
            self._h1_state = 1
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        if tag == "h1" and self._h1_state == 1:
            self._h1_state = 2
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title.append(data)
            return
        self.parts.append(data.replace("\n", " "))  # a source line break is a space in HTML
        if self._h1_state == 1:
            self.h1.append(data)


def parse_html(text: str) -> tuple[str | None, str, list[str]]:
    """(<title> or first <h1> or None, readable text, link targets) of an HTML page."""
    parser = _PageParser()
    parser.feed(text)
    # What feed() leaves unparsed, when it starts with "<", is a tag, comment or declaration
    # that runs unterminated to the end of the input; HTML5 drops it. Python < 3.11.13 would
    # instead, in close(), rescan the rest of the input once per "<" in it (quadratic, CPython
    # gh-135462: "<a " x 20,000 took minutes), so drop it here as newer versions do.
    if len(parser.rawdata) > 2 and parser.rawdata.startswith("<"):
        parser.rawdata = ""
    parser.close()
    # Only block elements break lines; runs of white space collapse, as a browser shows them.
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parser.parts).split("\n"))
    body = "\n".join(line for line in lines if line)
    links = [page for href in parser.hrefs if (page := page_from_href(href)) is not None]

    def wiki(match: re.Match[str]) -> str:  # [[Page]] written inside HTML text
        _add(links, page_from_wikilink(match.group("wtarget")))
        return match.group("wlabel") or match.group("wtarget")

    body = _WIKI_ONLY.sub(wiki, body)
    title = _SPACES.sub(" ", "".join(parser.title)).strip()
    title = title or _SPACES.sub(" ", "".join(parser.h1)).strip()
    return title or None, body, links
