"""The solver's tools over one KAG domain, with the JSON schemas the model sees.

    tools = Toolset(driver, "musique", index=index, embedder=embedder)
    obs = tools.execute({"id": "c1", "type": "function",
                         "function": {"name": "search", "arguments": '{"query": "Hank Snow"}'}})

- `search(query, k)`: the k chunks nearest to the query in the domain's FAISS evidence index:
  chunk id, document title, score and a short preview of the text;
- `visit(id)`: the full text of a chunk (by chunk id), or of a document's chunks (by document
  id, or by a page title / entity name, resolved like `kap graph neighbors`);
- `graph(name, relation?)`: an entity's one-hop facts, read-only: subject, predicate, object
  and the evidence chunk ids of each (optionally only one predicate);
- `python(code)`: the code run in the bubblewrap sandbox; no sandbox, a clear error;
- `answer(text)`: the final answer; it ends the episode.

Every observation is JSON text. `execute` never raises: malformed JSON arguments, an unknown
tool, missing or invalid arguments and failures inside a tool become error observations with
a `kind`, and the episode goes on.

What counts as read: a chunk whose full text an observation showed, that is, the chunks a
`visit` returned. A `search` preview (the first `preview_chars`) and the evidence ids `graph`
lists make a chunk *seen*, not read; evidence recall and evidence support count read chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import neo4j

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex
from kap.graphstore.indexing import search_evidence
from kap.graphstore.sampling import find_entity, neighbourhood
from kap.platform.errors import GraphStoreError, KapError
from kap.workers.sandbox import Sandbox

# ---- read-only Cypher, always with $parameters ----

CHUNK_BY_ID = """
MATCH (c:Chunk {id: $id}) WHERE c.domain = $domain
MATCH (c)-[:PART_OF]->(d:Document)
RETURN c.id AS chunk_id, d.id AS document_id, d.title AS title, c.text AS text
"""

DOCUMENT_CHUNKS = """
MATCH (d:Document {id: $id}) WHERE d.domain = $domain
MATCH (c:Chunk)-[:PART_OF]->(d)
RETURN c.id AS chunk_id, d.id AS document_id, d.title AS title, c.text AS text
ORDER BY c.ord
"""

CHUNK_TEXTS = "MATCH (c:Chunk) WHERE c.id IN $ids RETURN c.id AS id, c.text AS text"

ENTITY_DOCUMENT_CHUNKS = """
MATCH (d:Document)-[:ABOUT]->(:Entity {id: $entity_id}) WHERE d.domain = $domain
MATCH (c:Chunk)-[:PART_OF]->(d)
RETURN c.id AS chunk_id, d.id AS document_id, d.title AS title, c.text AS text
ORDER BY d.id, c.ord
"""

Row = dict[str, Any]
ToolCall = dict[str, Any]


class ErrorKind(StrEnum):
    MALFORMED = "malformed_arguments"  # arguments are not a JSON object
    UNKNOWN_TOOL = "unknown_tool"
    INVALID = "invalid_arguments"  # missing, wrong type or out of range
    FAILED = "tool_failed"  # the tool raised


@dataclass(frozen=True)
class Observation:
    content: str  # what the model sees (JSON text)
    is_error: bool = False
    done: bool = False  # the answer tool ended the episode
    read_chunk_ids: tuple[str, ...] = ()  # chunks whose full text `content` shows
    seen_chunk_ids: tuple[str, ...] = ()  # chunks only named or previewed
    error_kind: ErrorKind | None = None
    answer: str | None = None


class ToolArgumentError(ValueError):
    """A tool call's arguments are missing or invalid."""


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> Row:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


SCHEMAS: list[Row] = [
    _fn("search", "Find passages relevant to a query in the evidence index, best first.",
        {"query": {"type": "string", "description": "What to look for."},
         "k": {"type": "integer", "minimum": 1, "maximum": 20,
               "description": "How many passages (default 5)."}}, ["query"]),
    _fn("visit", "Read the full text of a chunk (chunk id) or of a document "
        "(document id, page title or entity name).",
        {"id": {"type": "string", "description": "A chunk id, document id or title."}}, ["id"]),
    _fn("graph", "An entity's facts in the knowledge graph: subject, predicate, object, and "
        "the chunk ids that support each fact.",
        {"name": {"type": "string", "description": "The entity's name or alias."},
         "relation": {"type": "string", "description": "Only facts with this predicate."}},
        ["name"]),
    _fn("python", "Run Python 3 code (standard library only, no network) and see its output.",
        {"code": {"type": "string", "description": "A complete program; print results."}},
        ["code"]),
    _fn("answer", "Give the final answer; this ends the task.",
        {"text": {"type": "string", "description": "The answer, as short as possible."}},
        ["text"]),
]  # fmt: skip


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def error(kind: ErrorKind, message: str) -> Observation:
    return Observation(_dump({"error": message, "kind": str(kind)}), is_error=True,
                       error_kind=kind)  # fmt: skip


def _string(args: Row, key: str, *, required: bool = True) -> str | None:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ToolArgumentError(f"`{key}` must be a non-empty string")
    return value.strip()


def parse_arguments(call: ToolCall) -> tuple[str, Row]:
    """(tool name, arguments) of an OpenAI-style tool call; ValueError when it is malformed."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError("a tool call needs function.name")
    raw = function.get("arguments") or "{}"
    args = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(args, dict):
        raise ValueError("arguments must be a JSON object")
    return function["name"], args


class Toolset:
    """The search-domain tools over one domain; shareable, it keeps no per-episode state."""

    def __init__(
        self,
        driver: neo4j.Driver,
        domain: str,
        *,
        index: EvidenceIndex,
        embedder: Embedder,
        sandbox: Sandbox | None = None,
        database: str = "neo4j",
        default_k: int = 5,
        max_k: int = 20,
        preview_chars: int = 160,
        max_visit_chars: int = 6000,
        max_facts: int = 40,
    ) -> None:
        self.driver, self.domain, self.database = driver, domain, database
        self.index, self.embedder, self.sandbox = index, embedder, sandbox
        self.default_k, self.max_k, self.preview_chars = default_k, max_k, preview_chars
        self.max_visit_chars, self.max_facts = max_visit_chars, max_facts

    @property
    def schemas(self) -> list[Row]:
        return SCHEMAS

    def execute(self, call: ToolCall) -> Observation:
        """Run one tool call; every failure is an error observation, never an exception."""
        try:
            name, args = parse_arguments(call)
        except (ValueError, TypeError) as exc:
            return error(ErrorKind.MALFORMED, f"malformed tool call: {exc}")
        handler = getattr(self, f"_tool_{name}", None) if name in _NAMES else None
        if handler is None:
            return error(ErrorKind.UNKNOWN_TOOL, f"unknown tool {name!r}; tools: {_NAMES}")
        try:
            result: Observation = handler(args)
        except ToolArgumentError as exc:
            return error(ErrorKind.INVALID, f"{name}: {exc}")
        except (KapError, neo4j.exceptions.Neo4jError, OSError, ValueError) as exc:
            return error(ErrorKind.FAILED, f"{name} failed: {exc}")
        return result

    # ---- the tools ----

    def _tool_search(self, args: Row) -> Observation:
        query = _string(args, "query")
        k = args.get("k", self.default_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.max_k:
            raise ToolArgumentError(f"`k` must be an integer from 1 to {self.max_k}")
        hits = search_evidence(self.driver, self.index, self.embedder, str(query), k,
                               database=self.database)  # fmt: skip
        texts = self._chunk_texts([h["chunk_id"] for h in hits])
        results = [{"chunk_id": h["chunk_id"], "title": h["title"], "score": round(h["score"], 4),
                    "preview": texts.get(h["chunk_id"], "")[: self.preview_chars]}
                   for h in hits]  # fmt: skip
        return Observation(_dump({"results": results}),
                           seen_chunk_ids=tuple(h["chunk_id"] for h in hits))  # fmt: skip

    def _tool_visit(self, args: Row) -> Observation:
        target = str(_string(args, "id"))
        rows = self._read(CHUNK_BY_ID, id=target) or self._read(DOCUMENT_CHUNKS, id=target)
        if not rows:
            try:
                entity = find_entity(self.driver, target, domain=self.domain,
                                     database=self.database)  # fmt: skip
            except GraphStoreError:
                entity = None
            rows = self._read(ENTITY_DOCUMENT_CHUNKS, entity_id=entity["id"]) if entity else []
        if not rows:
            raise ToolArgumentError(f"no chunk, document or page {target!r} in this domain")
        shown: list[Row] = []
        used = 0
        for row in rows:
            if shown and used + len(row["text"]) > self.max_visit_chars:
                break
            shown.append(row)
            used += len(row["text"])
        more = len(rows) - len(shown)
        body: Row = {"chunks": shown}
        if more:
            body["more"] = f"{more} more chunks: visit them by chunk id"
        return Observation(_dump(body), read_chunk_ids=tuple(r["chunk_id"] for r in shown))

    def _tool_graph(self, args: Row) -> Observation:
        name = str(_string(args, "name"))
        relation = _string(args, "relation", required=False)
        entity = find_entity(self.driver, name, domain=self.domain, database=self.database)
        region = neighbourhood(self.driver, entity["id"], 1, database=self.database)
        names = {n["id"]: n["name"] for n in region["nodes"]}
        facts = [{"subject": names.get(r["source"]), "predicate": r["predicate"],
                  "object": names.get(r["target"]), "evidence": list(r["evidence"] or [])}
                 for r in region["relations"]
                 if entity["id"] in (r["source"], r["target"])
                 and (relation is None or r["predicate"] == relation)]  # fmt: skip
        facts.sort(key=lambda f: (str(f["predicate"]), str(f["subject"]), str(f["object"])))
        body: Row = {"entity": entity["name"], "facts": facts[: self.max_facts]}
        if len(facts) > self.max_facts:
            body["more"] = f"{len(facts) - self.max_facts} more facts: filter by relation"
        seen = tuple(dict.fromkeys(c for f in facts[: self.max_facts] for c in f["evidence"]))
        return Observation(_dump(body), seen_chunk_ids=seen)

    def _tool_python(self, args: Row) -> Observation:
        code = args.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolArgumentError("`code` must be a non-empty string")
        if self.sandbox is None:
            return error(ErrorKind.FAILED, "python: no sandbox is configured; code never runs "
                         "unsandboxed")  # fmt: skip
        result = self.sandbox.run(code)  # SandboxError (a KapError): an error observation
        body = {"stdout": result.stdout, "stderr": result.stderr,
                "exit_code": result.exit_code, "timed_out": result.timed_out}  # fmt: skip
        return Observation(_dump(body), is_error=result.exit_code != 0)

    def _tool_answer(self, args: Row) -> Observation:
        text = str(_string(args, "text"))
        return Observation(_dump({"answer": text, "status": "recorded"}), done=True, answer=text)

    # ---- reads ----

    def _read(self, query: str, **params: str) -> list[Row]:
        records = self.driver.execute_query(query, params, domain=self.domain,
                                            database_=self.database).records  # fmt: skip
        return [dict(r) for r in records]

    def _chunk_texts(self, ids: list[str]) -> dict[str, str]:
        records = self.driver.execute_query(CHUNK_TEXTS, ids=ids, database_=self.database).records
        return {r["id"]: r["text"] for r in records}


_NAMES = tuple(s["function"]["name"] for s in SCHEMAS)
