"""Loader for `{"title", "text"}` records: a JSON list, one object, or JSONL.

This is the shape of the MuSiQue/HippoRAG corpus (`../shared/data/musique/corpus.json`), where
one page contributes several paragraphs under the same title; every record becomes its own
`SourceDocument` (duplicate titles are kept, ingestion resolves them to one entity). Optional
keys: `aliases` and `links` (lists of strings); other keys are ignored.
"""

from __future__ import annotations

from kap.graphstore.loaders._common import (
    Entry,
    Payload,
    optional_names,
    require_object,
    require_text,
)
from kap.graphstore.records import LoadResult, SourceDocument


def from_payload(payload: Payload) -> LoadResult:
    return LoadResult(documents=[_document(entry) for entry in payload.entries])


def _document(entry: Entry) -> SourceDocument:
    record = require_object(entry, 'an object with "title" and "text"')
    where = entry.where
    return SourceDocument(
        title=require_text(record.get("title"), "title", where),
        text=require_text(record.get("text"), "text", where),
        source=where,
        links=optional_names(record.get("links"), "links", where),
        aliases=optional_names(record.get("aliases"), "aliases", where),
    )
