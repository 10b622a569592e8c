"""Shared reading and validation of the loaders: strict UTF-8, JSON/JSONL with line numbers.

Every error is a `LoaderError` whose message starts with where the problem is, in the shape
editors and terminals understand: `path:LINE:COL` for syntax, `path#N` (record index in a
JSON list) or `path:LINE` (JSONL) for a bad record. Nothing here is quadratic: a 50 MB record
is read, decoded and parsed once.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kap.platform.errors import LoaderError

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
# A lone surrogate can come from a JSON "\ud800" escape; it cannot be encoded to UTF-8, so it
# would fail later, inside hashing or the Neo4j driver, far from the file that caused it.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Entry:
    """One parsed JSON value and where it came from ("path#N", "path:LINE" or "path")."""

    value: Any
    where: str


@dataclass(frozen=True)
class Payload:
    """A parsed JSON or JSONL file: its entries, and whether it was one non-list value."""

    path: Path
    entries: list[Entry]
    single: bool = False  # the file held one object (not a list, not JSONL)


def read_text(path: Path) -> str:
    """The file as text: strict UTF-8 (an error names the byte offset), a leading BOM dropped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return str(memoryview(data)[skip:], "utf-8")  # a view: no copy of a large file
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line = data.count(b"\n", 0, offset) + 1
        raise LoaderError(
            f"{path}: invalid UTF-8 at byte {offset} (line {line}): {exc.reason}; "
            "the loaders read UTF-8 only"
        ) from exc


def parse_payload(path: Path, text: str) -> Payload:
    """Parse `text` as JSONL (by suffix) or JSON; a .json file of several values is JSONL."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return _parse_jsonl(path, text)
    if not text.strip():
        raise LoaderError(f"{path}: no records (the file is empty)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one value per line under a .json name
            return _parse_jsonl(path, text)
        raise _syntax_error(path, exc, exc.lineno, exc.colno) from exc
    if isinstance(value, list):
        entries = [Entry(item, f"{path}#{i}") for i, item in enumerate(value)]
        payload = Payload(path, entries)
    else:
        payload = Payload(path, [Entry(value, str(path))], single=True)
    if not payload.entries or value == {}:
        raise LoaderError(f"{path}: no records (the JSON value is empty)")
    return payload


def _parse_jsonl(path: Path, text: str) -> Payload:
    entries: list[Entry] = []
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line or line.isspace():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _syntax_error(path, exc, lineno, exc.colno) from exc
        entries.append(Entry(value, f"{path}:{lineno}"))
    if not entries:
        raise LoaderError(f"{path}: no records (no non-blank lines)")
    return Payload(path, entries)


def _syntax_error(path: Path, exc: json.JSONDecodeError, line: int, col: int) -> LoaderError:
    return LoaderError(f"{path}:{line}:{col}: malformed JSON: {exc.msg}")


def require_object(entry: Entry, expected: str) -> dict[str, Any]:
    if not isinstance(entry.value, dict):
        got = type(entry.value).__name__ if entry.value is not None else "null"
        raise LoaderError(f"{entry.where}: expected {expected}, got {got}")
    return entry.value


def require_text(value: Any, field: str, where: str) -> str:
    """A present, non-blank string, returned verbatim (no stripping: names are data)."""
    if value is None:
        raise LoaderError(f"{where}: field {field!r} is missing")
    if not isinstance(value, str):
        raise LoaderError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value or value.isspace():  # isspace() scans without copying a large text
        raise LoaderError(f"{where}: field {field!r} is blank")
    check_encodable(value, field, where)
    return value


def optional_text(value: Any, field: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LoaderError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    check_encodable(value, field, where)
    return value


def optional_names(value: Any, field: str, where: str) -> tuple[str, ...]:
    """An optional list of non-blank strings (aliases, links)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LoaderError(f"{where}: field {field!r} must be a list of strings")
    return tuple(require_text(v, f"{field}[{i}]", where) for i, v in enumerate(value))


def check_encodable(value: str, field: str, where: str) -> None:
    match = _SURROGATE.search(value)
    if match is not None:
        raise LoaderError(
            f"{where}: field {field!r} holds a lone surrogate "
            f"U+{ord(match.group()):04X} at character {match.start()} (not encodable as UTF-8)"
        )
