"""What the loaders hand to ingestion: parsed source records, before chunking and resolution.

Loaders only parse; they never touch Neo4j. Ingestion turns a `SourceDocument` into a
Document, its Chunks, an Entity for its title and MENTIONS/REL edges; a `Triple` into a typed
relation between two entities; a `ToolSpec` into a (:Tool) node with FEEDS edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceDocument:
    """One page or paragraph: its title names an entity; `links` name other pages."""

    title: str
    text: str
    source: str  # "path:line" or "path#record" — where an error or a reader can find it
    links: tuple[str, ...] = ()  # titles this page links to ([[Page]], <a href>)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Triple:
    """A structured fact: subject -predicate-> object, with the text that supports it."""

    subject: str
    predicate: str
    object: str
    source: str
    evidence: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A tool the agent can call: OpenAI function-calling shape, plus its output type."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments
    source: str
    returns: dict[str, Any] | None = None  # JSON Schema of the result, when the schema says


@dataclass
class LoadResult:
    documents: list[SourceDocument] = field(default_factory=list)
    triples: list[Triple] = field(default_factory=list)
    tools: list[ToolSpec] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.documents) + len(self.triples) + len(self.tools)
