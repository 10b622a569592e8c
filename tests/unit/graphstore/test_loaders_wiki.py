"""Wiki loader: Markdown and HTML pages, titles, readable text, page links, folders."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

from kap.graphstore.loaders import load_file
from kap.graphstore.loaders.wiki import page_from_href, page_from_wikilink, parse_html
from kap.platform.errors import LoaderError

MARKDOWN = """\
# Alpha *Beta* ##

Alpha links [[Some_Page]], [[Other Page#History|the other one]] and [[#Local]].
See [local](Local_Page.md "a title"), [spaced](<Spaced%20Page.html>), [web](https://x.org/A),
[top](#top), [mail](mailto:a@b.c), ![a picture](Picture.png) and [the ref][r1]; [no][def].
<https://auto.example/x>

```python
# not a title, [not](Parsed)
```

## Later heading ##

[r1]: Ref_Target.html
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_markdown_page(tmp_path: Path) -> None:
    path = write(tmp_path / "alpha.md", MARKDOWN)
    [doc] = load_file(path).documents
    assert doc.title == "Alpha *Beta*"
    assert doc.source == str(path)
    assert doc.links == ("Some Page", "Other Page", "Local Page", "Spaced Page", "Ref Target")
    assert doc.text == (
        "Alpha *Beta*\n\n"
        "Alpha links Some_Page, the other one and #Local.\n"
        "See local, spaced, web,\n"
        "top, mail, a picture and the ref; [no][def].\n"
        "https://auto.example/x\n\n"
        "# not a title, [not](Parsed)\n\n"
        "Later heading"
    )


@pytest.mark.parametrize(
    ("name", "title"),
    [("Some_Page.md", "Some Page"), ("AC%2FDC.md", "AC/DC"), ("notes.markdown", "notes")],
)
def test_markdown_without_h1_takes_its_title_from_the_file_name(
    tmp_path: Path, name: str, title: str
) -> None:
    path = write(tmp_path / name, "## Only a subheading\n\nBody text.\n")
    [doc] = load_file(path).documents
    assert (doc.title, doc.text) == (title, "Only a subheading\n\nBody text.")


def test_markdown_hashtag_is_not_a_heading(tmp_path: Path) -> None:
    [doc] = load_file(write(tmp_path / "Tags.md", "#hashtag first\n# Real Title\n")).documents
    assert doc.title == "Real Title"
    assert doc.text == "#hashtag first\nReal Title"


HTML = """<!DOCTYPE html>
<html><head><title> The
  Page   Title </title>
<style>p { color: red }</style>
<script>var s = "<a href='Hidden_Page.html'>x</a>";</script></head>
<body><h1>Heading &amp; more</h1>
<p>Caf&eacute; text <a href="Caf%C3%A9.html#menu">cafe</a> and <a href="/wiki/AC%2FDC">band</a>,
<a href="http://example.org/Page">web</a> <a href="#top">top</a> <a href="mailto:x@y">m</a>
<a href="../dir/Some_Page.htm?x=1">sp</a> <a>no href</a> [[Wiki Link|wl]]</p>
<!-- <div>commented out</div> -->
<ul><li>one</li><li>two</li></ul></body></html>
"""


def test_html_page(tmp_path: Path) -> None:
    path = write(tmp_path / "page.html", HTML)
    [doc] = load_file(path).documents
    assert doc.title == "The Page Title"
    assert doc.links == ("Café", "AC/DC", "Some Page", "Wiki Link")
    assert doc.text == (
        "Heading & more\nCafé text cafe and band, web top m sp no href wl\none\ntwo"
    )


@pytest.mark.parametrize(
    ("html", "title"),
    [
        ("<h1>First <b>H1</b></h1><h1>Second</h1><p>x</p>", "First H1"),
        ("<title>  </title><h1>Fallback</h1>", "Fallback"),
        ("<p>no heading at all</p>", "Dir Page"),
    ],
)
def test_html_title_falls_back_to_h1_then_file_name(tmp_path: Path, html: str, title: str) -> None:
    [doc] = load_file(write(tmp_path / "Dir_Page.htm", html)).documents
    assert doc.title == title


def test_links_are_deduplicated_and_never_point_to_the_page_itself(tmp_path: Path) -> None:
    text = "# Self\n[[Self]] [[Other]] [again](Other.md) [[Other_Page]] [[Other Page]]\n"
    [doc] = load_file(write(tmp_path / "self.md", text)).documents
    assert doc.links == ("Other", "Other Page")


@pytest.mark.parametrize(
    ("href", "page"),
    [
        ("Some_Page.html", "Some Page"),
        ("Some_Page.md", "Some Page"),
        ("Some_Page", "Some Page"),
        ("Some_Page.HTM#History", "Some Page"),
        ("./sub/Deep_Page.html?action=view", "Deep Page"),
        ("Caf%C3%A9", "Café"),
        ("AC%2FDC.html", "AC/DC"),
        ("http://example.org/Page", None),
        ("https://example.org/Page.html", None),
        ("//example.org/Page", None),
        ("#anchor", None),
        ("mailto:someone@example.org", None),
        ("javascript:alert(1)", None),
        ("?q=1", None),
        ("../", None),
        ("_.html", None),
    ],
)
def test_page_from_href(href: str, page: str | None) -> None:
    assert page_from_href(href) == page


@pytest.mark.parametrize(
    ("target", "page"),
    [
        ("Some_Page", "Some Page"),
        ("Page#Section", "Page"),
        ("#Section", None),
        ("Node.js", "Node.js"),
    ],
)
def test_page_from_wikilink(target: str, page: str | None) -> None:
    assert page_from_wikilink(target) == page


def test_hostile_names_in_wiki_pages_are_data(tmp_path: Path) -> None:
    name = "O'Brien \"q\" `tick` {brace} $x '}) DETACH DELETE n //"
    href = quote(f"{name} 3".replace(" ", "_"), safe="")  # "/" encoded: one page, not a path
    text = f"# {name}\n\nSee [[{name} 2|{name}]] and [x]({href}).\n"
    [doc] = load_file(write(tmp_path / "hostile.md", text)).documents
    assert doc.title == name
    assert doc.links == (f"{name} 2", f"{name} 3")
    assert doc.text == f"{name}\n\nSee {name} and x."


def test_directory_loads_every_page_sorted_and_skips_hidden(tmp_path: Path) -> None:
    write(tmp_path / "b.md", "# B\n\nbee")
    write(tmp_path / "a" / "z.html", "<title>Z</title><p>zed</p>")
    write(tmp_path / "a" / "c.MD", "# C\n\ncee")
    write(tmp_path / ".hidden" / "h.md", "# H\n\nhidden")
    write(tmp_path / ".dot.md", "# D\n\ndot")
    write(tmp_path / "notes.txt", "not a page")
    result = load_file(tmp_path)
    assert [d.title for d in result.documents] == ["C", "Z", "B"]
    assert [d.source for d in result.documents] == [
        str(tmp_path / "a" / "c.MD"),
        str(tmp_path / "a" / "z.html"),
        str(tmp_path / "b.md"),
    ]


def test_empty_directory_has_no_records(tmp_path: Path) -> None:
    write(tmp_path / "readme.txt", "no pages here")
    with pytest.raises(LoaderError, match=re.escape(f"{tmp_path}: no records")):
        load_file(tmp_path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.md", ""),
        ("heading_only.md", "#\n\n   \n"),
        ("scripts.html", "<title>T</title><script>alert(1)</script><style>p{}</style>"),
    ],
)
def test_page_without_readable_text_is_refused(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(LoaderError, match=re.escape(f"{path}: field 'text' is blank")):
        load_file(path)


def test_bad_page_in_a_directory_fails_the_whole_directory(tmp_path: Path) -> None:
    write(tmp_path / "a.md", "# A\n\nfine")
    bad = tmp_path / "b.html"
    bad.write_bytes(b"<p>caf\xe9</p>")  # Latin-1, not UTF-8
    with pytest.raises(LoaderError, match=re.escape(f"{bad}: invalid UTF-8 at byte 6 (line 1)")):
        load_file(tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "text",
    [
        "[" * 1_000_000,
        "[[" * 500_000,
        ("[" + "a" * 999) * 1000,
        "# x" + " #" * 500_000,
        "# " + " " * 1_000_000 + "x",
    ],
    ids=["brackets", "wiki-brackets", "long-labels", "closing-hashes", "spaces"],
)
def test_markdown_adversarial_pages_load(tmp_path: Path, text: str) -> None:
    # Quadratic regexes would take hours on these 1 MB pages; a linear parser takes well under
    # a second. The timeout only turns a hang into a failure; no timing is asserted.
    [doc] = load_file(write(tmp_path / "adversarial.md", text + "\nend")).documents
    assert doc.text.endswith("end")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "tail",
    ["<a " * 100_000, "<a x='>'" * 100_000, "<!--" * 100_000, "</ a" * 100_000],
    ids=["unclosed-tags", "quoted-gt", "comments", "end-tags"],
)
def test_html_unterminated_tail_is_dropped_in_linear_time(tail: str) -> None:
    # Python < 3.11.13 rescans the rest of the input per "<" here (CPython gh-135462).
    title, body, links = parse_html("<title>T</title><p>kept <a href='Kept.html'>k</a></p>" + tail)
    assert (title, body, links) == ("T", "kept k", ["Kept"])
