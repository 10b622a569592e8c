"""Loaders: the JSON formats, detection, and the bad-input rules (errors name file and place)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kap.graphstore.loaders import FORMATS, detect_format, load_file
from kap.graphstore.loaders.hotpot import join_sentences
from kap.graphstore.records import SourceDocument, ToolSpec, Triple
from kap.platform.errors import GraphStoreError, LoaderError

MUSIQUE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "musique" / "corpus.json"
HOSTILE = [
    'O\'Brien "the" `tick` {brace} $param',
    "'}) DETACH DELETE n //",
    "line one\nline two\r\nend",
    "MATCH (n) WITH n CALL { RETURN 1 } $x ${y} \\u0000-ish \\",
]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def jsonl(*records: Any) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# ---- json_records ----


def test_json_list_records_keep_order_sources_and_duplicate_titles(tmp_path: Path) -> None:
    records = [
        {"title": "Paris", "text": "Capital of France.", "aliases": ["City of Light"]},
        {"title": "Paris", "text": "Second paragraph of the same page."},
        {"title": "Lyon", "text": "A city.", "id": 7},  # unknown keys are ignored
    ]
    path = write(tmp_path, "corpus.json", json.dumps(records))
    result = load_file(path)
    assert result.documents == [
        SourceDocument("Paris", "Capital of France.", f"{path}#0", aliases=("City of Light",)),
        SourceDocument("Paris", "Second paragraph of the same page.", f"{path}#1"),
        SourceDocument("Lyon", "A city.", f"{path}#2"),
    ]
    assert len(result) == 3 and not result.triples and not result.tools


def test_jsonl_records_cite_their_line(tmp_path: Path) -> None:
    text = jsonl({"title": "A", "text": "a"}) + "\n   \n" + jsonl({"title": "B", "text": "b"})
    path = write(tmp_path, "corpus.jsonl", text)
    assert [d.source for d in load_file(path).documents] == [f"{path}:1", f"{path}:4"]


def test_json_file_holding_one_value_per_line_loads_as_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path, "corpus.json", jsonl({"title": "A", "text": "a"}, {"title": "B", "text": "b"})
    )
    assert [d.source for d in load_file(path).documents] == [f"{path}:1", f"{path}:2"]


def test_jsonl_line_separator_inside_a_string_is_not_a_line_break(tmp_path: Path) -> None:
    text = '{"title": "A", "text": "one\u2028two\u0085three"}\n'  # raw U+2028 and NEL
    path = write(tmp_path, "corpus.jsonl", text)
    assert load_file(path).documents[0].text == "one\u2028two\u0085three"


@pytest.mark.parametrize("name", ["corpus.json", "corpus.jsonl"])
def test_utf8_bom_is_stripped(tmp_path: Path, name: str) -> None:
    body = (
        jsonl({"title": "Été", "text": "ok"})
        if name.endswith("l")
        else '[{"title": "Été", "text": "ok"}]'
    )
    path = write(tmp_path, name, b"\xef\xbb\xbf" + body.encode())
    assert load_file(path).documents[0].title == "Été"


def test_hostile_names_come_through_verbatim(tmp_path: Path) -> None:
    records = [{"title": name, "text": name, "aliases": [name]} for name in HOSTILE]
    facts = [{"subject": n, "predicate": n, "object": n, "evidence": n} for n in HOSTILE]
    docs = load_file(write(tmp_path, "corpus.json", json.dumps(records))).documents
    triples = load_file(write(tmp_path, "facts.jsonl", jsonl(*facts))).triples
    assert [(d.title, d.text, d.aliases) for d in docs] == [(n, n, (n,)) for n in HOSTILE]
    assert [(t.subject, t.predicate, t.object, t.evidence) for t in triples] == [
        (n, n, n, n) for n in HOSTILE
    ]


def test_a_50_mb_text_record_loads_whole(tmp_path: Path) -> None:
    chunk = 'lorem ipsum \\n dolor \\"sit\\" amet ' * 1600  # escapes decode to one char each
    decoded = json.loads(f'"{chunk}"')
    repeats = 50 * 1024 * 1024 // len(chunk) + 1
    path = tmp_path / "big.json"
    with path.open("w", encoding="utf-8") as out:  # written piecewise: the test holds no 50 MB
        out.write('[{"title": "Big", "text": "')
        for _ in range(repeats):
            out.write(chunk)
        out.write('"}]')
    assert path.stat().st_size > 50 * 1024 * 1024
    [doc] = load_file(path).documents
    assert len(doc.text) == len(decoded) * repeats
    assert doc.text.startswith(decoded) and doc.text.endswith(decoded)


# ---- bad input ----


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "corpus.json",
        '[\n  {"title": "A", "text": "a"},\n  {"title": "B" "text": "b"}\n]',
    )
    with pytest.raises(LoaderError, match=re.escape(f"{path}:3:17: malformed JSON")):
        load_file(path)


def test_malformed_jsonl_names_the_line_of_the_bad_record(tmp_path: Path) -> None:
    text = (
        jsonl({"title": "A", "text": "a"}, {"title": "B", "text": "b"})
        + '{"title": "C", "text": }\n'
    )
    path = write(tmp_path, "corpus.jsonl", text)
    with pytest.raises(LoaderError, match=re.escape(f"{path}:3:24: malformed JSON")):
        load_file(path)


@pytest.mark.parametrize(("bom", "offset"), [(b"", 27), (b"\xef\xbb\xbf", 30)])
def test_invalid_utf8_names_file_and_byte_offset(tmp_path: Path, bom: bytes, offset: int) -> None:
    data = bom + b'[{"title": "A", "text": "ok\xff"}]'
    path = write(tmp_path, "corpus.json", data)
    with pytest.raises(
        LoaderError, match=re.escape(f"{path}: invalid UTF-8 at byte {offset} (line 1)")
    ):
        load_file(path)
    assert data[offset] == 0xFF


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "no title"}, "field 'title' is missing"),
        ({"title": "  \n", "text": "blank title"}, "field 'title' is blank"),
        ({"title": "T", "text": ""}, "field 'text' is blank"),
        ({"title": "T"}, "field 'text' is missing"),
        ({"title": "T", "text": 3}, "field 'text' must be a string, got int"),
        ({"title": "T", "text": "x", "aliases": "A"}, "field 'aliases' must be a list of strings"),
        ({"title": "T", "text": "x", "aliases": ["ok", ""]}, "field 'aliases[1]' is blank"),
        ({"title": "T\ud800", "text": "x"}, "field 'title' holds a lone surrogate U+D800"),
        (["T", "text"], 'expected an object with "title" and "text", got list'),
        (None, 'expected an object with "title" and "text", got null'),
    ],
)
def test_bad_record_names_file_record_and_field(tmp_path: Path, record: Any, message: str) -> None:
    good = {"title": "Good", "text": "fine"}
    path = write(tmp_path, "corpus.json", json.dumps([good, good, record]))
    with pytest.raises(LoaderError, match=re.escape(f"{path}#2: {message}")):
        load_file(path, format="json_records")
    line_path = write(tmp_path, "corpus.jsonl", jsonl(good, record))
    with pytest.raises(LoaderError, match=re.escape(f"{line_path}:2: {message}")):
        load_file(line_path, format="json_records")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("corpus.json", ""),
        ("corpus.json", "  \n\n"),
        ("corpus.json", "\ufeff"),
        ("corpus.json", "[]"),
        ("corpus.json", "{}"),
        ("corpus.jsonl", ""),
        ("corpus.jsonl", "\n \n\t\n"),
    ],
)
def test_empty_file_has_no_records(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(LoaderError, match=re.escape(f"{path}: no records")):
        load_file(path, format="json_records")


def test_loader_error_is_a_graph_store_error() -> None:
    assert issubclass(LoaderError, GraphStoreError)


# ---- triples ----


def test_triples_with_optional_evidence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "facts.jsonl",
        jsonl(
            {
                "subject": "Paris",
                "predicate": "capital_of",
                "object": "France",
                "evidence": "P is.",
            },
            {"subject": "Lyon", "predicate": "in", "object": "France"},
            {"subject": "Nice", "predicate": "in", "object": "France", "evidence": "  "},
        ),
    )
    assert load_file(path).triples == [
        Triple("Paris", "capital_of", "France", f"{path}:1", "P is."),
        Triple("Lyon", "in", "France", f"{path}:2"),
        Triple("Nice", "in", "France", f"{path}:3"),  # blank evidence cites nothing
    ]


def test_triple_missing_a_field_fails_the_whole_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "facts.jsonl",
        jsonl({"subject": "A", "predicate": "p", "object": "B"}, {"subject": "A", "object": "B"}),
    )
    with pytest.raises(LoaderError, match=re.escape(f"{path}:2: field 'predicate' is missing")):
        load_file(path, format="triples")


# ---- hotpot ----


def test_hotpot_object_form(tmp_path: Path) -> None:
    context = {
        "Radio City": ["Radio City is a station.", " It plays songs."],
        "FM": ["FM is radio."],
    }
    path = write(tmp_path, "context.json", json.dumps(context))
    assert load_file(path).documents == [
        SourceDocument("Radio City", "Radio City is a station. It plays songs.", f"{path}#0"),
        SourceDocument("FM", "FM is radio.", f"{path}#1"),
    ]


def test_hotpot_pair_list_form_and_jsonl(tmp_path: Path) -> None:
    pairs = [["Alpha", ["One.", "Two."]], ["Beta", ["Three."]]]
    path = write(tmp_path, "context.json", json.dumps(pairs))
    docs = load_file(path).documents
    assert [(d.title, d.text, d.source) for d in docs] == [
        ("Alpha", "One. Two.", f"{path}#0"),
        ("Beta", "Three.", f"{path}#1"),
    ]
    lines = write(tmp_path, "context.jsonl", jsonl(*pairs))
    assert [d.source for d in load_file(lines, format="hotpot").documents] == [
        f"{lines}:1",
        f"{lines}:2",
    ]


@pytest.mark.parametrize(
    ("sentences", "text"),
    [
        (["A.", "B."], "A. B."),
        (["A.", " B.", " C."], "A. B. C."),  # HotpotQA's leading spaces are not doubled
        (["A. ", "B."], "A. B."),
        (["A.", "", "B."], "A. B."),
        (["Only."], "Only."),
    ],
)
def test_join_sentences(sentences: list[str], text: str) -> None:
    assert join_sentences(sentences) == text


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"T": ["ok", 3]}, "#0: sentence 1 of 'T' must be a string, got int"),
        ({"T": []}, "#0: field 'text' is blank"),
        ({"T": "not a list"}, "#0: the sentences of 'T' must be a list of strings"),
        ([["T", ["s"]], ["U"]], "#1: expected a {title: [sentences]} object"),
        ([["", ["s"]]], "#0: field 'title' is blank"),
    ],
)
def test_bad_hotpot_context(tmp_path: Path, context: Any, message: str) -> None:
    path = write(tmp_path, "context.json", json.dumps(context))
    with pytest.raises(LoaderError, match=re.escape(f"{path}{message}")):
        load_file(path, format="hotpot")


# ---- tools ----

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "returns": {"type": "object", "properties": {"celsius": {"type": "number"}}},
}


def test_tools_in_every_accepted_shape(tmp_path: Path) -> None:
    wrapped = [{"type": "function", "function": WEATHER}]
    bare = [{**WEATHER, "name": "lookup.v2-x", "returns": None, "x-returns": {"type": "string"}}]
    outputs = {k: v for k, v in WEATHER.items() if k != "returns"} | {"output": {"type": "integer"}}
    shapes = {
        "wrapped.json": json.dumps(wrapped),
        "bare.json": json.dumps(bare),
        "single.json": json.dumps(outputs),
        "lines.jsonl": jsonl(*wrapped, {**WEATHER, "name": "other"}),
    }
    loaded = {name: load_file(write(tmp_path, name, text)).tools for name, text in shapes.items()}
    assert loaded["wrapped.json"] == [
        ToolSpec(
            "get_weather",
            "Weather for a city.",
            WEATHER["parameters"],
            f"{tmp_path / 'wrapped.json'}#0",
            WEATHER["returns"],
        )
    ]
    assert [(t.name, t.returns) for t in loaded["bare.json"]] == [
        ("lookup.v2-x", {"type": "string"})
    ]
    assert [(t.source, t.returns) for t in loaded["single.json"]] == [
        (str(tmp_path / "single.json"), {"type": "integer"})
    ]
    assert [t.name for t in loaded["lines.jsonl"]] == ["get_weather", "other"]


def test_tool_without_returns_or_description(tmp_path: Path) -> None:
    path = write(
        tmp_path, "tools.json", json.dumps([{"name": "t", "parameters": {"type": "object"}}])
    )
    [tool] = load_file(path).tools
    assert (tool.description, tool.returns) == ("", None)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ({**WEATHER, "name": "get weather"}, "tool name 'get weather' is invalid"),
        ({**WEATHER, "name": "x" * 65}, "is invalid: it must match ^[A-Za-z0-9_.-]{1,64}$"),
        ({**WEATHER, "name": "ok\n"}, "tool name 'ok\\n' is invalid"),
        ({**WEATHER, "name": "'}) DETACH DELETE n //"}, 'tool name "\'}) DETACH DELETE n //"'),
        ({**WEATHER, "parameters": {"type": "string"}}, "(tool 'get_weather'): field 'parameters'"),
        ({**WEATHER, "parameters": ["city"]}, "(tool 'get_weather'): field 'parameters' must be"),
        ({"name": "get_weather"}, "(tool 'get_weather'): field 'parameters' is missing"),
        ({**WEATHER, "returns": "number"}, "(tool 'get_weather'): field 'returns' must be"),
        (
            {**WEATHER, "parameters": {"type": "object", "properties": []}},
            "(tool 'get_weather'): field 'parameters.properties' must be an object",
        ),
        ({"description": "no name", "parameters": {"type": "object"}}, "field 'name' is missing"),
    ],
)
def test_invalid_tool_is_refused_by_name(tmp_path: Path, function: Any, message: str) -> None:
    path = write(tmp_path, "tools.json", json.dumps([{"type": "function", "function": function}]))
    with pytest.raises(LoaderError, match=re.escape(f"{path}#0") + ".*" + re.escape(message)):
        load_file(path, format="tools")


def test_duplicate_tool_names_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "tools.jsonl", jsonl(WEATHER, WEATHER))
    with pytest.raises(
        LoaderError, match=re.escape(f"{path}:2: tool 'get_weather' is defined twice")
    ):
        load_file(path)


# ---- detection ----


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.json", json.dumps([{"title": "T", "text": "x"}]), "json_records"),
        ("a.jsonl", jsonl({"title": "T", "text": "x"}), "json_records"),
        ("a.json", json.dumps({"title": "T", "text": "x"}), "json_records"),
        ("a.jsonl", jsonl({"subject": "a", "predicate": "p", "object": "b"}), "triples"),
        ("a.json", json.dumps([{"subject": "a", "predicate": "p", "object": "b"}]), "triples"),
        ("a.json", json.dumps([{"type": "function", "function": WEATHER}]), "tools"),
        ("a.json", json.dumps(WEATHER), "tools"),
        ("a.ndjson", jsonl(WEATHER), "tools"),
        ("a.json", json.dumps({"Title": ["s1", "s2"]}), "hotpot"),
        ("a.json", json.dumps([["Title", ["s1", "s2"]]]), "hotpot"),
        ("a.jsonl", jsonl(["Title", ["s1"]]), "hotpot"),
        ("a.md", "# T\n\ntext", "wiki"),
        ("a.HTML", "<p>x</p>", "wiki"),
        ("a.htm", "<p>x</p>", "wiki"),
    ],
)
def test_detect_format(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = write(tmp_path, name, content)
    assert detect_format(path) == expected
    assert len(load_file(path)) > 0


def test_a_directory_is_wiki(tmp_path: Path) -> None:
    assert detect_format(tmp_path) == "wiki"


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("notes.txt", "hello", "unknown file extension"),
        ("a.json", json.dumps([{"foo": 1}]), "its first record matches no known shape"),
        ("a.json", json.dumps([42]), "its first record matches no known shape"),
    ],
)
def test_undetectable_file_asks_for_format(
    tmp_path: Path, name: str, content: str, why: str
) -> None:
    path = write(tmp_path, name, content)
    expected = f"{path}: cannot detect the format ({why}); pass --format with one of: "
    for call in (detect_format, load_file):
        with pytest.raises(LoaderError, match=re.escape(expected + ", ".join(FORMATS))):
            call(path)


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path, "facts.txt", jsonl({"subject": "a", "predicate": "p", "object": "b"}))
    assert [t.object for t in load_file(path, format="triples").triples] == ["b"]


def test_unknown_format_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="unknown format 'csv'; choose one of: json_records"):
        load_file(tmp_path, format="csv")
    with pytest.raises(LoaderError, match=re.escape(f"{tmp_path / 'nope.json'}: no such file")):
        load_file(tmp_path / "nope.json")


def test_formats_are_the_five_loaders() -> None:
    assert set(FORMATS) == {"json_records", "hotpot", "wiki", "triples", "tools"}


# ---- the real corpus ----


def test_real_musique_corpus() -> None:
    if not MUSIQUE.is_file():
        pytest.fail(f"the shared MuSiQue corpus is missing at {MUSIQUE}")
    assert detect_format(MUSIQUE) == "json_records"
    docs = load_file(MUSIQUE).documents
    assert len(docs) == 1890
    assert len({d.title for d in docs}) == 1764
    assert docs[0].source == f"{MUSIQUE}#0" and docs[-1].source == f"{MUSIQUE}#1889"
    assert all(d.text.strip() for d in docs)
