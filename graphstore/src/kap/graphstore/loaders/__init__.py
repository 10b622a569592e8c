"""File loaders of the Knowledge-Action Graph: parse a corpus file into records, nothing more.

    load_file(Path("corpus.json"))                  # format detected
    load_file(Path("facts.jsonl"), format="triples")

Formats (`FORMATS`): json_records, hotpot, wiki, triples, tools — one module each. A file is
read and validated whole before anything is returned, so a bad record means the caller gets a
`LoaderError` naming the file and the line or record, and nothing from that file: ingestion
never writes half a file. Loaders never touch Neo4j.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kap.graphstore.loaders import hotpot, json_records, tools, triples, wiki
from kap.graphstore.loaders._common import JSONL_SUFFIXES, Payload, parse_payload, read_text
from kap.graphstore.records import LoadResult
from kap.platform.errors import LoaderError

__all__ = ["FORMATS", "detect_format", "load_file"]

_FROM_PAYLOAD: dict[str, Callable[[Payload], LoadResult]] = {
    "json_records": json_records.from_payload,
    "hotpot": hotpot.from_payload,
    "triples": triples.from_payload,
    "tools": tools.from_payload,
}
FORMATS: tuple[str, ...] = ("json_records", "hotpot", "wiki", "triples", "tools")
_JSON_SUFFIXES = JSONL_SUFFIXES | {".json"}


def load_file(path: Path, *, format: str | None = None) -> LoadResult:  # noqa: A002
    """Parse one file (or a folder of wiki pages); `format` overrides detection."""
    if format is not None and format not in FORMATS:
        raise LoaderError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise LoaderError(f"{path}: no such file or directory")
    if format == "wiki" or (format is None and _is_wiki(path)):
        return wiki.load(path)
    if format is None and path.suffix.lower() not in _JSON_SUFFIXES:
        raise _undetected(path, "unknown file extension")
    payload = parse_payload(path, read_text(path))  # parsed once, for detection and loading
    return _FROM_PAYLOAD[format or _detect_payload(payload)](payload)


def detect_format(path: Path) -> str:
    """The loader for `path`, from its extension and a look at its first record."""
    if _is_wiki(path):
        return "wiki"
    if path.suffix.lower() not in _JSON_SUFFIXES:
        raise _undetected(path, "unknown file extension")
    return _detect_payload(parse_payload(path, read_text(path)))


def _is_wiki(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in wiki.SUFFIXES


def _detect_payload(payload: Payload) -> str:
    first = payload.entries[0].value
    if isinstance(first, dict):
        if _is_tool(first):
            return "tools"
        if isinstance(first.get("title"), str) and "text" in first:
            return "json_records"
        if {"subject", "predicate", "object"} <= first.keys():
            return "triples"
        if _is_sentences(next(iter(first.values()), None)):
            return "hotpot"  # {title: [sentences], ...}
    is_pair = isinstance(first, list) and len(first) == 2 and isinstance(first[0], str)
    if is_pair and _is_sentences(first[1]):
        return "hotpot"  # [title, [sentences]] pairs
    raise _undetected(payload.path, "its first record matches no known shape")


def _is_tool(record: dict[str, Any]) -> bool:
    return isinstance(record.get("function"), dict) or (
        "name" in record and isinstance(record.get("parameters"), dict)
    )


def _is_sentences(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, str) for s in value)


def _undetected(path: Path, why: str) -> LoaderError:
    return LoaderError(
        f"{path}: cannot detect the format ({why}); pass --format with one of: {', '.join(FORMATS)}"
    )
