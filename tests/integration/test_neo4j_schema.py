"""ensure_schema() against the real local Neo4j, through the official driver."""

from __future__ import annotations

import uuid

import neo4j
import pytest
from neo4j.exceptions import ConstraintError

from kap.graphstore.schema import NODE_LABELS, SHOW_INDEXES, ensure_schema
from kap.platform.errors import GraphStoreError

pytestmark = pytest.mark.integration


def test_ensure_schema_is_idempotent_and_everything_is_online(driver: neo4j.Driver) -> None:
    first = ensure_schema(driver)
    second = ensure_schema(driver)
    assert first == second
    records = driver.execute_query(SHOW_INDEXES).records
    by_name = {r["name"]: r for r in records}
    assert set(first) <= set(by_name)
    assert all(by_name[name]["state"] == "ONLINE" for name in first)
    assert len([r for r in records if r["name"] in first]) == len(first)  # no duplicates


def test_every_node_id_is_unique(driver: neo4j.Driver) -> None:
    constraints = driver.execute_query(
        "SHOW CONSTRAINTS YIELD type, labelsOrTypes, properties RETURN *"
    ).records
    covered = {
        r["labelsOrTypes"][0]
        for r in constraints
        if r["type"] in {"UNIQUENESS", "NODE_PROPERTY_UNIQUENESS"} and r["properties"] == ["id"]
    }
    assert set(NODE_LABELS) <= covered


@pytest.mark.parametrize("label", NODE_LABELS)
def test_a_duplicate_id_is_refused_and_the_first_node_kept(
    driver: neo4j.Driver, domain: str, label: str
) -> None:
    node_id = f"{domain}:{label}"
    create = f"CREATE (n:{label} {{id: $id, domain: $d, v: $v}})"
    driver.execute_query(create, id=node_id, d=domain, v=1)
    with pytest.raises(ConstraintError):
        driver.execute_query(create, id=node_id, d=domain, v=2)
    rows = driver.execute_query(f"MATCH (n:{label} {{id: $id}}) RETURN n.v AS v", id=node_id)
    assert [r["v"] for r in rows.records] == [1]


def test_a_duplicate_relation_id_is_refused(driver: neo4j.Driver, domain: str) -> None:
    driver.execute_query(
        "CREATE (a:Entity {id: $a, domain: $d})-[:REL {id: $r}]->(b:Entity {id: $b, domain: $d})",
        a=f"{domain}:a", b=f"{domain}:b", r=f"{domain}:r", d=domain,
    )  # fmt: skip
    with pytest.raises(ConstraintError):
        driver.execute_query(
            "MATCH (a:Entity {id: $a}), (b:Entity {id: $b}) CREATE (b)-[:REL {id: $r}]->(a)",
            a=f"{domain}:a", b=f"{domain}:b", r=f"{domain}:r",
        )  # fmt: skip


def test_fulltext_finds_entities_by_name_and_alias_and_chunks_by_text(
    driver: neo4j.Driver, domain: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    driver.execute_query(
        "CREATE (:Entity {id: $e, domain: $d, name: $name, aliases: [$alias]}), "
        "(:Chunk {id: $c, domain: $d, text: $text})",
        e=f"{domain}:e", c=f"{domain}:c", d=domain, name=f"Zebulon{tag} Quay",
        alias=f"Quaystone{tag}", text=f"The harbour of Marrowick{tag} froze in winter.",
    )  # fmt: skip
    search = (
        "CALL db.index.fulltext.queryNodes($index, $q) YIELD node "
        "WHERE node.domain = $d RETURN node.id AS id"
    )
    for index, query, expected in (
        ("entity_names", f"Zebulon{tag}", f"{domain}:e"),
        ("entity_names", f"Quaystone{tag}", f"{domain}:e"),
        ("chunk_text", f"Marrowick{tag}", f"{domain}:c"),
    ):
        ids = [
            r["id"] for r in driver.execute_query(search, index=index, q=query, d=domain).records
        ]
        assert ids == [expected], (index, query)


def test_a_conflicting_index_of_the_same_name_is_reported(driver: neo4j.Driver) -> None:
    driver.execute_query("DROP INDEX chunk_text IF EXISTS")
    driver.execute_query("CREATE FULLTEXT INDEX chunk_text FOR (n:Document) ON EACH [n.title]")
    try:
        with pytest.raises(GraphStoreError, match="chunk_text"):
            ensure_schema(driver)
    finally:
        driver.execute_query("DROP INDEX chunk_text IF EXISTS")
        ensure_schema(driver)
