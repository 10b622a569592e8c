"""Ingestion: parsed records -> Documents, Chunks, Entities, MENTIONS and REL facts in Neo4j.

    kap ingest PATH --domain D [--format F] [--batch-size N]

Per domain, every page title is an entity (resolved by its normalized name, so the same
title in two files is one entity); a chunk that mentions another known title or alias
yields `(:Chunk)-[:MENTIONS]->(:Entity)` and a fact `(page)-[:REL {predicate: "mentions",
evidence: [chunk]}]->(mentioned)`; wiki links yield `links_to` facts; triples yield typed
facts whose evidence is a chunk of their evidence text. All rows are computed before any
write (a bad record fails the file before the graph is touched), then written in batches,
each batch one managed write transaction of idempotent MERGEs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import neo4j

from kap.graphstore import queries as Q
from kap.graphstore.extract import Extractor, normalize_predicate
from kap.graphstore.mentions import MentionMatcher
from kap.graphstore.records import LoadResult, SourceDocument, ToolSpec, Triple
from kap.graphstore.text import TextSpan, chunk_text, content_id, normalize_name, sha256_text
from kap.platform.errors import GraphStoreError

Row = dict[str, Any]
Progress = Callable[[int], None]


def entity_id(domain: str, name: str) -> str:
    return content_id("entity", domain, normalize_name(name))


def relation_id(domain: str, subject: str, predicate: str, obj: str) -> str:
    return content_id("rel", domain, subject, predicate, obj)


@dataclass
class Batch:
    """The rows of a group of documents, written together in one transaction."""

    documents: list[Row] = field(default_factory=list)
    chunks: list[Row] = field(default_factory=list)
    next: list[Row] = field(default_factory=list)
    mentions: list[Row] = field(default_factory=list)
    relations: list[Row] = field(default_factory=list)

    def statements(self) -> list[tuple[str, list[Row]]]:
        """The batch's writes, in the order their MATCHes need."""
        return [
            (Q.MERGE_DOCUMENTS, self.documents),
            (Q.MERGE_CHUNKS, self.chunks),
            (Q.MERGE_NEXT, self.next),
            (Q.MERGE_MENTIONS, self.mentions),
            (Q.MERGE_RELATIONS, merge_relation_rows(self.relations)),
        ]

    def pieces(self, max_chars: int) -> list[Batch]:
        """The batch cut into consecutive transactions of about `max_chars` of chunk text.

        Neo4j caps a transaction's memory (`dbms.memory.transaction.total.max`): one 50 MB
        document in one transaction fails. A NEXT or MENTIONS row goes with its (later) chunk,
        the documents with the first piece and the facts with the last, so every MATCH finds
        what an earlier piece or its own has written.
        """
        parts, size = [Batch(documents=self.documents)], 0
        part_of: dict[str, int] = {}
        for row in self.chunks:
            if size and size + len(row["text"]) > max_chars:
                parts.append(Batch())
                size = 0
            parts[-1].chunks.append(row)
            part_of[row["id"]] = len(parts) - 1
            size += len(row["text"])
        for row in self.next:
            parts[part_of[row["next"]]].next.append(row)
        for row in self.mentions:
            parts[part_of[row["chunk_id"]]].mentions.append(row)
        parts[-1].relations = self.relations
        return parts


def merge_relation_rows(rows: list[Row]) -> list[Row]:
    """One row per relation id, evidence united in first-seen order (the MERGE does the same)."""
    merged: dict[str, Row] = {}
    for row in rows:
        if (first := merged.get(row["id"])) is None:
            merged[row["id"]] = {**row, "evidence": list(row["evidence"])}
        else:
            seen = set(first["evidence"])
            first["evidence"] += [x for x in row["evidence"] if x not in seen]
    return list(merged.values())


@dataclass
class IngestStats:
    documents: int = 0
    chunks: int = 0
    entities: int = 0
    mentions: int = 0
    relations: int = 0
    tools: int = 0


class Ingestor:
    def __init__(
        self,
        driver: neo4j.Driver,
        domain: str,
        *,
        database: str = "neo4j",
        batch_size: int = 200,
        max_tx_chars: int = 8_000_000,
        max_tokens: int = 200,
        overlap: int = 32,
        extractor: Extractor | None = None,
    ) -> None:
        if not domain.strip():
            raise ValueError("domain must not be empty")
        self.driver, self.domain, self.database = driver, domain, database
        self.batch_size, self.max_tokens, self.overlap = batch_size, max_tokens, overlap
        self.max_tx_chars = max_tx_chars  # chunk text per transaction, whatever the batch size
        self.extractor = extractor
        self._known: dict[str, str] = {}  # normalized name or alias -> entity id

    def resolve(self, name: str) -> str:
        """The entity a name denotes: a known name or alias first, else its own id."""
        return self._known.get(normalize_name(name)) or entity_id(self.domain, name)

    def _spans(self, doc: SourceDocument) -> list[TextSpan]:
        return chunk_text(doc.text, max_tokens=self.max_tokens, overlap=self.overlap)

    # ---- entities ----

    def entities(self, result: LoadResult) -> tuple[list[Row], MentionMatcher]:
        """Every entity the file names plus those already in the domain, and their matcher."""
        rows: dict[str, Row] = {}
        self._known = {}

        def add(name: str, aliases: Iterable[str] = (), kind: str = "page") -> None:
            eid = entity_id(self.domain, name)
            row = rows.setdefault(
                eid,
                {
                    "id": eid,
                    "domain": self.domain,
                    "name": name,
                    "norm": normalize_name(name),
                    "type": kind,
                    "aliases": [],
                },
            )
            row["aliases"] += [a for a in aliases if a not in row["aliases"]]

        for doc in result.documents:
            add(doc.title, doc.aliases)
        names: dict[str, set[str]] = defaultdict(set)
        existing = self.driver.execute_query(
            Q.EXISTING_ENTITIES, domain=self.domain, database_=self.database
        ).records
        for rec in existing:
            for name in [rec["name"], *rec["aliases"]]:
                names[name].add(rec["id"])
        for row in rows.values():
            for name in [row["name"], *row["aliases"]]:
                names[name].add(row["id"])
        by_norm: dict[str, set[str]] = defaultdict(set)
        for name, ids in names.items():
            by_norm[normalize_name(name)] |= ids
        for norm, ids in by_norm.items():
            own = content_id("entity", self.domain, norm)  # the name's own entity, if it has one,
            self._known[norm] = own if own in ids else min(ids)  # before an alias holder's
        # Triple ends and wiki-link targets resolve to a known title or alias; the rest are
        # new entities. A link may name a page this file does not hold: it still becomes an
        # entity, matchable now as it will be (read back from the graph) on the next run.
        others = [(n, "concept") for t in result.triples for n in (t.subject, t.object)]
        others += [(t, "page") for t in sorted({t for d in result.documents for t in d.links})]
        for name, kind in others:
            if normalize_name(name) not in self._known:
                add(name, kind=kind)
                self._known[normalize_name(name)] = entity_id(self.domain, name)
        self._add_extracted(result, add)
        for row in rows.values():  # extracted names are matched now, as on every later run
            names[row["name"]].add(row["id"])
        return list(rows.values()), MentionMatcher(names)

    def _add_extracted(self, result: LoadResult, add: Callable[..., None]) -> None:
        """Extracted names resolve to a known page or alias when they can; the rest are new."""
        if self.extractor is None:
            return
        for doc in result.documents:
            for span in self._spans(doc):
                for fact in self.extractor.extract(span.text, title=doc.title):
                    for name in (fact.subject, fact.object):
                        norm = normalize_name(name)
                        if norm and norm not in self._known:
                            add(name, kind="concept")
                            self._known[norm] = entity_id(self.domain, name)

    # ---- rows of one document ----

    def _document_rows(
        self, doc: SourceDocument, matcher: MentionMatcher, batch: Batch, about: str | None = None
    ) -> None:
        doc_id = content_id("doc", self.domain, doc.title, doc.text)
        page = about or entity_id(self.domain, doc.title)
        batch.documents.append(
            {
                "id": doc_id,
                "domain": self.domain,
                "title": doc.title,
                "source": doc.source,
                "sha256": sha256_text(doc.text),
                "entity_id": page,
            }
        )
        spans = self._spans(doc)
        chunk_ids = []
        for span in spans:
            cid = content_id("chunk", doc_id, str(span.start), span.text)
            chunk_ids.append(cid)
            batch.chunks.append(
                {
                    "id": cid,
                    "domain": self.domain,
                    "document_id": doc_id,
                    "text": span.text,
                    "ord": span.ord,
                    "n_tokens": span.n_tokens,
                    "start": span.start,
                    "end": span.end,
                }
            )
            for mentioned in sorted(matcher.find(span.text) - {page}):
                batch.mentions.append({"chunk_id": cid, "entity_id": mentioned})
                batch.relations.append(self._relation(page, "mentions", mentioned, [cid]))
            if self.extractor and about is None:
                for fact in self.extractor.extract(span.text, title=doc.title):
                    subject, obj = self.resolve(fact.subject), self.resolve(fact.object)
                    if subject != obj:
                        predicate = normalize_predicate(fact.predicate)
                        batch.relations.append(self._relation(subject, predicate, obj, [cid]))
        batch.next += [{"prev": a, "next": b} for a, b in pairwise(chunk_ids)]
        for target in doc.links:
            if (linked := self.resolve(target)) != page:  # a link to itself (or an alias) is none
                evidence = self._link_evidence(target, spans, chunk_ids)
                batch.relations.append(self._relation(page, "links_to", linked, evidence))

    @staticmethod
    def _link_evidence(target: str, spans: list[TextSpan], chunk_ids: list[str]) -> list[str]:
        key = normalize_name(target)
        hits = [
            cid
            for span, cid in zip(spans, chunk_ids, strict=True)
            if key in normalize_name(span.text)
        ]
        return hits or chunk_ids[:1]

    def _relation(self, subject: str, predicate: str, obj: str, evidence: list[str]) -> Row:
        rid = relation_id(self.domain, subject, predicate, obj)
        return {
            "id": rid,
            "domain": self.domain,
            "subject": subject,
            "object": obj,
            "predicate": predicate,
            "evidence": evidence,
        }

    def _triple_rows(self, triple: Triple, matcher: MentionMatcher, batch: Batch) -> None:
        subject, obj = self.resolve(triple.subject), self.resolve(triple.object)
        evidence: list[str] = []
        if triple.evidence:
            title = f"{triple.subject} {triple.predicate} {triple.object}"
            doc = SourceDocument(title=title, text=triple.evidence, source=triple.source)
            before = len(batch.chunks)
            self._document_rows(doc, matcher, batch, about=subject)
            evidence = [row["id"] for row in batch.chunks[before:]]
        batch.relations.append(self._relation(subject, triple.predicate, obj, evidence))

    # ---- the run ----

    def batches(self, result: LoadResult, matcher: MentionMatcher) -> Iterator[tuple[Batch, int]]:
        batch, n = Batch(), 0
        items: list[SourceDocument | Triple] = [*result.documents, *result.triples]
        for item in items:
            if isinstance(item, SourceDocument):
                self._document_rows(item, matcher, batch)
            else:
                self._triple_rows(item, matcher, batch)
            n += 1
            if n == self.batch_size:
                yield batch, n
                batch, n = Batch(), 0
        if n:
            yield batch, n

    def run(self, result: LoadResult, *, progress: Progress | None = None) -> IngestStats:
        stats = IngestStats()
        entities, matcher = self.entities(result)
        step = self.batch_size * 5  # entity rows are small
        for first in range(0, len(entities), step):
            self._write([(Q.MERGE_ENTITIES, entities[first : first + step])])
        stats.entities = len(entities)
        tools, feeds = tool_rows(result.tools, self.domain)
        if tools:
            self._write([(Q.MERGE_TOOLS, tools), (Q.MERGE_FEEDS, feeds)])
            stats.tools = len(tools)
            if progress:
                progress(len(tools))
        for batch, n in self.batches(result, matcher):
            for piece in batch.pieces(self.max_tx_chars):
                self._write(piece.statements())
            stats.documents += len(batch.documents)
            stats.chunks += len(batch.chunks)
            stats.mentions += len(batch.mentions)
            stats.relations += len(batch.relations)
            if progress:
                progress(n)
        return stats

    def _write(self, statements: list[tuple[str, list[Row]]]) -> None:
        def work(tx: neo4j.ManagedTransaction) -> None:
            for query, rows in statements:
                if rows:
                    tx.run(query, rows=rows).consume()

        with self.driver.session(database=self.database) as session:
            session.execute_write(work)


def type_key(schema: dict[str, Any] | None) -> str | None:
    """A schema's semantic type, what FEEDS matches on: `x-kap-type`, `title` or `format`.

    Bare primitives ("string", "integer") are not types here: every tool takes strings, and
    linking on them would connect everything to everything.
    """
    if not schema:
        return None
    for key in ("x-kap-type", "title", "format"):
        value = schema.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def tool_rows(tools: list[ToolSpec], domain: str) -> tuple[list[Row], list[Row]]:
    """(:Tool) rows, and FEEDS rows wherever one tool's output type is another's input type."""
    rows: list[Row] = []
    for tool in tools:
        props = tool.parameters.get("properties", {})
        inputs = sorted({k for p in props.values() if isinstance(p, dict) if (k := type_key(p))})
        rows.append({"id": f"{domain}/{tool.name}", "domain": domain, "name": tool.name,
                     "description": tool.description, "schema": json.dumps(tool.parameters),
                     "input_types": inputs, "output_type": type_key(tool.returns)})  # fmt: skip
    feeds = [
        {"source": a["id"], "target": b["id"], "type": a["output_type"]}
        for a in rows
        for b in rows
        if a is not b and a["output_type"] and a["output_type"] in b["input_types"]
    ]
    return rows, feeds


def delete_document(
    driver: neo4j.Driver, document_id: str, *, domain: str, database: str = "neo4j"
) -> list[str]:
    """Remove a document, its chunks and mentions, and facts it alone supported.

    Returns the removed chunk ids, so the caller can drop their vectors from the evidence index.
    A document id that is not in `domain` is an error, and nothing is deleted.
    """

    def work(tx: neo4j.ManagedTransaction) -> list[str]:
        found = tx.run(Q.DOCUMENT_CHUNK_IDS, id=document_id, domain=domain).single()
        if found is None:
            raise GraphStoreError(f"no document {document_id!r} in domain {domain!r}")
        chunk_ids: list[str] = found["chunk_ids"]
        tx.run(Q.PRUNE_EVIDENCE, domain=domain, chunk_ids=chunk_ids).consume()
        tx.run(Q.DELETE_DOCUMENT, id=document_id).consume()
        return chunk_ids

    with driver.session(database=database) as session:
        return session.execute_write(work)
