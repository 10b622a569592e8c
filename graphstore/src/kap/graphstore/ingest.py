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
            (Q.MERGE_RELATIONS, self.relations),
        ]


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
        max_tokens: int = 200,
        overlap: int = 32,
        extractor: Extractor | None = None,
    ) -> None:
        if not domain.strip():
            raise ValueError("domain must not be empty")
        self.driver, self.domain, self.database = driver, domain, database
        self.batch_size, self.max_tokens, self.overlap = batch_size, max_tokens, overlap
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
        for triple in result.triples:
            add(triple.subject, kind="concept")
            add(triple.object, kind="concept")
        # A wiki link may name a page this file does not hold: it still becomes an entity,
        # matchable now as it will be (read back from the graph) on the next run.
        for target in sorted({t for d in result.documents for t in d.links}):
            add(target)
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
        for name, ids in names.items():
            self._known.setdefault(normalize_name(name), min(ids))
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
            if normalize_name(target) != normalize_name(doc.title):
                evidence = self._link_evidence(target, spans, chunk_ids)
                batch.relations.append(
                    self._relation(page, "links_to", entity_id(self.domain, target), evidence)
                )

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
        subject, obj = entity_id(self.domain, triple.subject), entity_id(self.domain, triple.object)
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
            self._write(batch.statements())
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
    """

    def work(tx: neo4j.ManagedTransaction) -> list[str]:
        chunk_ids: list[str] = tx.run(Q.DOCUMENT_CHUNK_IDS, id=document_id).single(strict=True)[
            "chunk_ids"
        ]
        tx.run(Q.PRUNE_EVIDENCE, domain=domain, chunk_ids=chunk_ids).consume()
        tx.run(Q.DELETE_DOCUMENT, id=document_id).consume()
        return chunk_ids

    with driver.session(database=database) as session:
        return session.execute_write(work)
