"""The Neo4j schema of the Knowledge-Action Graph: uniqueness constraints and indexes.

`ensure_schema()` is idempotent (every statement is `IF NOT EXISTS`), refuses an existing
index or constraint of the same name that covers something else (which `IF NOT EXISTS` would
silently keep), and returns only when every index is online. The layout is documented in
docs/graph-schema.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import neo4j

from kap.platform.errors import GraphStoreError

# Every node of the KAG carries a unique `id` (DESIGN.md §4).
NODE_LABELS = (
    "Document",
    "Chunk",
    "Entity",
    "Tool",
    "Verifier",
    "ActionRecord",
    "Observation",
)
# Facts are relationships, so relation chains are plain path queries; each has its own id.
REL_TYPES = ("REL",)
DOMAIN_LABELS = ("Document", "Chunk", "Entity", "Tool")


@dataclass(frozen=True)
class SchemaItem:
    name: str
    kind: str  # "constraint" or "index"
    entity: str  # "NODE" or "RELATIONSHIP"
    labels: tuple[str, ...]
    properties: tuple[str, ...]
    statement: str


def _snake(label: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in label).lstrip("_")


def schema_items() -> list[SchemaItem]:
    items = [
        SchemaItem(
            f"{_snake(label)}_id",
            "constraint",
            "NODE",
            (label,),
            ("id",),
            f"CREATE CONSTRAINT {_snake(label)}_id IF NOT EXISTS "
            f"FOR (n:{label}) REQUIRE n.id IS UNIQUE",
        )
        for label in NODE_LABELS
    ]
    items += [
        SchemaItem(
            f"{_snake(rel)}_id",
            "constraint",
            "RELATIONSHIP",
            (rel,),
            ("id",),
            f"CREATE CONSTRAINT {_snake(rel)}_id IF NOT EXISTS "
            f"FOR ()-[r:{rel}]-() REQUIRE r.id IS UNIQUE",
        )
        for rel in REL_TYPES
    ]
    items += [
        SchemaItem(
            f"{_snake(label)}_domain",
            "index",
            "NODE",
            (label,),
            ("domain",),
            f"CREATE INDEX {_snake(label)}_domain IF NOT EXISTS FOR (n:{label}) ON (n.domain)",
        )
        for label in DOMAIN_LABELS
    ]
    items += [
        SchemaItem(
            "entity_names", "index", "NODE", ("Entity",), ("name", "aliases"),
            "CREATE FULLTEXT INDEX entity_names IF NOT EXISTS "
            "FOR (n:Entity) ON EACH [n.name, n.aliases]",
        ),
        SchemaItem(
            "chunk_text", "index", "NODE", ("Chunk",), ("text",),
            "CREATE FULLTEXT INDEX chunk_text IF NOT EXISTS FOR (n:Chunk) ON EACH [n.text]",
        ),
    ]  # fmt: skip
    return items


SHOW_INDEXES = (
    "SHOW INDEXES YIELD name, entityType, labelsOrTypes, properties, state, owningConstraint "
    "RETURN name, entityType, labelsOrTypes, properties, state, owningConstraint"
)
AWAIT_INDEXES = "CALL db.awaitIndexes($seconds)"


def ensure_schema(
    driver: neo4j.Driver, *, database: str = "neo4j", timeout_s: int = 300
) -> list[str]:
    """Create every constraint and index of the KAG, wait until online; return their names."""
    items = schema_items()
    for item in items:
        driver.execute_query(item.statement, database_=database)
    _verify(driver, items, database)
    driver.execute_query(AWAIT_INDEXES, seconds=timeout_s, database_=database)
    _require_online(driver, database)
    return [item.name for item in items]


def _verify(driver: neo4j.Driver, items: list[SchemaItem], database: str) -> None:
    """Fail loudly when a same-named index covers other labels or properties."""
    found = {r["name"]: r for r in driver.execute_query(SHOW_INDEXES, database_=database).records}
    for item in items:
        record = found.get(item.name)
        if record is None:  # a constraint's backing index may be named after the constraint
            record = next((r for r in found.values() if r["owningConstraint"] == item.name), None)
        if record is None:
            raise GraphStoreError(f"schema item {item.name} missing after creation")
        got = (record["entityType"], tuple(record["labelsOrTypes"]), tuple(record["properties"]))
        want = (item.entity, item.labels, item.properties)
        if got != want:
            raise GraphStoreError(
                f"existing index {item.name} covers {got}, expected {want}; "
                "drop it, then run ensure_schema again"
            )


def _require_online(driver: neo4j.Driver, database: str) -> None:
    records = driver.execute_query(SHOW_INDEXES, database_=database).records
    failed = [r["name"] for r in records if r["state"] != "ONLINE"]
    if failed:
        raise GraphStoreError(f"indexes not online: {', '.join(sorted(failed))}")
