"""Loader for structured facts: JSONL (or a JSON list) of `{"subject", "predicate", "object"}`.

An optional `evidence` string is the text that supports the fact; ingestion stores it as a
chunk and cites it on the relation. Names are taken verbatim: quotes, braces or Cypher inside
them are data, and reach Neo4j only as query parameters.
"""

from __future__ import annotations

from kap.graphstore.loaders._common import (
    Entry,
    Payload,
    optional_text,
    require_object,
    require_text,
)
from kap.graphstore.records import LoadResult, Triple


def from_payload(payload: Payload) -> LoadResult:
    return LoadResult(triples=[_triple(entry) for entry in payload.entries])


def _triple(entry: Entry) -> Triple:
    record = require_object(entry, 'an object with "subject", "predicate" and "object"')
    where = entry.where
    evidence = optional_text(record.get("evidence"), "evidence", where)
    return Triple(
        subject=require_text(record.get("subject"), "subject", where),
        predicate=require_text(record.get("predicate"), "predicate", where),
        object=require_text(record.get("object"), "object", where),
        source=where,
        evidence=evidence if evidence and not evidence.isspace() else None,  # "" cites nothing
    )
