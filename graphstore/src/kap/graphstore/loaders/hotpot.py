"""Loader for HotpotQA-style context: `{title: [sentences]}` or `[[title, [sentences]], ...]`.

The object form maps each page title to its sentences; the list form is HotpotQA's own
`context` field. JSONL of either form also loads. A document's text is its sentences joined
with a space, except where a sentence already carries one: HotpotQA keeps the leading space
of every sentence after the first, and doubling it would change the text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kap.graphstore.loaders._common import (
    Entry,
    Payload,
    require_text,
)
from kap.graphstore.records import LoadResult, SourceDocument
from kap.platform.errors import LoaderError


def from_payload(payload: Payload) -> LoadResult:
    documents = [
        _document(title, sentences, where)
        for entry in payload.entries
        for title, sentences, where in _pages(entry)
    ]
    return LoadResult(documents=documents)


def _pages(entry: Entry) -> Iterator[tuple[Any, Any, str]]:
    """(title, sentences, where) for each page an entry holds."""
    value = entry.value
    if isinstance(value, dict):
        if not value:
            raise LoaderError(f"{entry.where}: no records (empty object)")
        for i, (title, sentences) in enumerate(value.items()):
            yield title, sentences, f"{entry.where}#{i}"
    elif isinstance(value, list) and len(value) == 2:
        yield value[0], value[1], entry.where
    else:
        raise LoaderError(
            f"{entry.where}: expected a {{title: [sentences]}} object "
            "or a [title, [sentences]] pair"
        )


def _document(title: Any, sentences: Any, where: str) -> SourceDocument:
    title = require_text(title, "title", where)
    if not isinstance(sentences, list):
        raise LoaderError(f"{where}: the sentences of {title!r} must be a list of strings")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise LoaderError(
                f"{where}: sentence {i} of {title!r} must be a string, "
                f"got {type(sentence).__name__}"
            )
    return SourceDocument(
        title=title, text=require_text(join_sentences(sentences), "text", where), source=where
    )


def join_sentences(sentences: list[str]) -> str:
    """Join with one space where neither neighbour already has whitespace at the seam."""
    parts: list[str] = []
    for sentence in sentences:
        if parts and not parts[-1][-1:].isspace() and not sentence[:1].isspace():
            parts.append(" ")
        if sentence:
            parts.append(sentence)
    return "".join(parts)
