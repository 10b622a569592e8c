"""Ingestion into the real Neo4j: idempotence, resumption, deletion, hostile names as data."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import neo4j
import pytest

from kap.graphstore.extract import LLMExtractor
from kap.graphstore.ingest import Ingestor, delete_document, entity_id
from kap.graphstore.records import LoadResult, SourceDocument, Triple
from kap.platform.llm import ChatClient, EndpointConfig
from tests.support.openai_server import completion, openai_server

pytestmark = pytest.mark.integration

HOSTILE = 'Bobby\'}) DETACH DELETE n // `tables` {$x} "quoted"'

CORPUS = LoadResult(
    documents=[
        SourceDocument("Ada Lovelace", "Ada Lovelace worked with Charles Babbage on the "
                       "Analytical Engine in London.", "t#0"),
        SourceDocument("Charles Babbage", "Charles Babbage designed the Analytical Engine. "
                       "He lived in London.", "t#1"),
        SourceDocument("Analytical Engine", "The Analytical Engine was a proposed mechanical "
                       "computer.", "t#2", links=("Charles Babbage",)),
        SourceDocument("London", "London is the capital of England. " * 120, "t#3"),
        SourceDocument(HOSTILE, f"{HOSTILE} wrote about London and Ada Lovelace.", "t#4"),
    ],
    triples=[Triple("Ada Lovelace", "collaborated_with", "Charles Babbage", "t:1",
                    evidence="Lovelace translated Menabrea's paper for Babbage.")],
)  # fmt: skip


def snapshot(driver: neo4j.Driver, domain: str) -> tuple[list[Any], list[Any]]:
    nodes = driver.execute_query(
        "MATCH (n {domain: $d}) RETURN labels(n) AS l, properties(n) AS p", d=domain
    ).records
    rels = driver.execute_query(
        "MATCH (a {domain: $d})-[r]->(b) RETURN a.id AS a, type(r) AS t, properties(r) AS p, "
        "b.id AS b",
        d=domain,
    ).records
    norm = lambda v: sorted(v) if isinstance(v, list) else v  # noqa: E731 (evidence order is set-like)
    node_rows = sorted(
        repr((r["l"], sorted((k, norm(v)) for k, v in r["p"].items()))) for r in nodes
    )
    rel_rows = sorted(
        repr((r["a"], r["t"], sorted((k, norm(v)) for k, v in r["p"].items()), r["b"]))
        for r in rels
    )
    return node_rows, rel_rows


def test_ingest_builds_documents_chunks_entities_and_facts(
    driver: neo4j.Driver, domain: str
) -> None:
    stats = Ingestor(driver, domain, batch_size=2).run(CORPUS)
    assert stats.documents == 6  # five pages and one evidence text
    assert stats.chunks > stats.documents  # London's long page is cut into several chunks
    chain = driver.execute_query(
        "MATCH (a:Entity {id: $a})-[r:REL {predicate: 'mentions'}]->(b:Entity {id: $b}) "
        "MATCH (c:Chunk) WHERE c.id IN r.evidence RETURN c.text AS text",
        a=entity_id(domain, "Ada Lovelace"), b=entity_id(domain, "Charles Babbage"),
    ).records  # fmt: skip
    assert chain and "Charles Babbage" in chain[0]["text"]
    link = driver.execute_query(
        "MATCH (:Entity {id: $a})-[r:REL {predicate: 'links_to'}]->(:Entity {id: $b}) RETURN r",
        a=entity_id(domain, "Analytical Engine"), b=entity_id(domain, "Charles Babbage"),
    ).records  # fmt: skip
    assert len(link) == 1
    typed = driver.execute_query(
        "MATCH (:Entity {id: $a})-[r:REL {predicate: 'collaborated_with'}]->() "
        "MATCH (c:Chunk) WHERE c.id IN r.evidence RETURN c.text AS text",
        a=entity_id(domain, "Ada Lovelace"),
    ).records
    assert [r["text"] for r in typed] == ["Lovelace translated Menabrea's paper for Babbage."]
    nexts = driver.execute_query(
        "MATCH (:Chunk {domain: $d})-[:NEXT]->(:Chunk) RETURN count(*) AS n", d=domain
    ).records[0]["n"]
    assert nexts == stats.chunks - stats.documents


def test_hostile_names_are_stored_verbatim(driver: neo4j.Driver, domain: str) -> None:
    Ingestor(driver, domain).run(CORPUS)
    names = driver.execute_query(
        "MATCH (e:Entity {domain: $d}) RETURN e.name AS name", d=domain
    ).records
    assert HOSTILE in {r["name"] for r in names}
    assert (
        driver.execute_query("MATCH (n {domain: $d}) RETURN count(n) AS n", d=domain).records[0][
            "n"
        ]
        > 5
    )  # nothing was deleted by the name


def test_ingesting_twice_changes_nothing(driver: neo4j.Driver, domain: str) -> None:
    Ingestor(driver, domain, batch_size=2).run(CORPUS)
    first = snapshot(driver, domain)
    Ingestor(driver, domain, batch_size=3).run(CORPUS)
    assert snapshot(driver, domain) == first


def test_transactions_cut_by_text_size_give_the_same_graph(
    driver: neo4j.Driver, domain: str
) -> None:
    """A document too large for one transaction is written in pieces, to the same graph."""
    Ingestor(driver, domain).run(CORPUS)
    whole = snapshot(driver, domain)
    driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)
    tiny = Ingestor(driver, domain, max_tx_chars=100)  # about one chunk per transaction
    batches = list(tiny.batches(CORPUS, tiny.entities(CORPUS)[1]))
    assert max(len(batch.pieces(100)) for batch, _ in batches) > 3
    tiny.run(CORPUS)
    assert snapshot(driver, domain) == whole


def test_a_run_killed_half_way_and_restarted_equals_a_clean_run(
    driver: neo4j.Driver, domain: str
) -> None:
    Ingestor(driver, domain, batch_size=2).run(CORPUS)
    clean = snapshot(driver, domain)
    driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)

    class Killed(Exception):
        pass

    def die_after_first_batch(_: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        Ingestor(driver, domain, batch_size=2).run(CORPUS, progress=die_after_first_batch)
    partial = snapshot(driver, domain)
    assert 0 < len(partial[0]) < len(clean[0])
    Ingestor(driver, domain, batch_size=2).run(CORPUS)
    assert snapshot(driver, domain) == clean


def test_deleting_a_document_removes_what_only_it_supported(
    driver: neo4j.Driver, domain: str
) -> None:
    Ingestor(driver, domain).run(CORPUS)
    doc = driver.execute_query(
        "MATCH (d:Document {domain: $d, title: 'Ada Lovelace'}) RETURN d.id AS id", d=domain
    ).records[0]["id"]
    removed = delete_document(driver, doc, domain=domain)
    assert removed
    left = driver.execute_query(
        "MATCH (c:Chunk) WHERE c.id IN $ids RETURN count(c) AS n", ids=removed
    ).records[0]["n"]
    assert left == 0
    ada, babbage = entity_id(domain, "Ada Lovelace"), entity_id(domain, "Charles Babbage")
    rels = driver.execute_query(
        "MATCH (:Entity {id: $a})-[r:REL]->(:Entity {id: $b}) RETURN r.predicate AS p, "
        "r.evidence AS ev", a=ada, b=babbage,
    ).records  # fmt: skip
    # "mentions" had only Ada's page as evidence: gone. The triple's fact keeps its own.
    assert [r["p"] for r in rels] == ["collaborated_with"]
    assert all(not set(r["ev"]) & set(removed) for r in rels)
    still = driver.execute_query(
        "MATCH (d:Document {domain: $d}) RETURN count(d) AS n", d=domain
    ).records[0]["n"]
    assert still == 5
    assert (
        driver.execute_query("MATCH (e:Entity {id: $a}) RETURN count(e) AS n", a=ada).records[0][
            "n"
        ]
        == 1
    )  # entities stay: other documents still name them


def test_tools_become_nodes_with_feeds_edges(driver: neo4j.Driver, domain: str) -> None:
    from kap.graphstore.records import ToolSpec

    search = ToolSpec(
        "search",
        "Search the web.",
        {"type": "object", "properties": {"query": {"type": "string"}}},
        "tools.json#0",
        returns={"type": "array", "title": "Hits"},
    )
    fetch = ToolSpec(
        "fetch",
        "Read the hits.",
        {"type": "object", "properties": {"hits": {"type": "array", "title": "Hits"}}},
        "tools.json#1",
        returns={"type": "string", "title": "Page"},
    )
    summarize = ToolSpec(
        "summarize",
        "Summarize a page.",
        {
            "type": "object",
            "properties": {
                "page": {"type": "string", "title": "Page"},
                "style": {"type": "string"},
            },
        },
        "tools.json#2",
    )
    stats = Ingestor(driver, domain).run(LoadResult(tools=[search, fetch, summarize]))
    assert stats.tools == 3
    chain = driver.execute_query(
        "MATCH p = (:Tool {id: $a})-[:FEEDS]->(:Tool)-[:FEEDS]->(:Tool {id: $c}) "
        "RETURN [n IN nodes(p) | n.name] AS names",
        a=f"{domain}/search", c=f"{domain}/summarize",
    ).records  # fmt: skip
    assert [r["names"] for r in chain] == [["search", "fetch", "summarize"]]
    feeds = driver.execute_query(
        "MATCH (:Tool {domain: $d})-[f:FEEDS]->() RETURN count(f) AS n", d=domain
    ).records[0]["n"]
    assert feeds == 2  # bare strings ("query", "style") link nothing


def test_tool_chains_follow_feeds(driver: neo4j.Driver, domain: str) -> None:
    from kap.graphstore.records import ToolSpec
    from kap.graphstore.sampling import sample_tool_chain

    def tool(name: str, takes: str | None, gives: str | None) -> ToolSpec:
        props = {"x": {"type": "string", "title": takes}} if takes else {}
        returns = {"type": "string", "title": gives} if gives else None
        return ToolSpec(name, name, {"type": "object", "properties": props}, "t", returns)

    Ingestor(driver, domain).run(LoadResult(tools=[tool("a", None, "A"), tool("b", "A", "B"),
                                                   tool("c", "B", None)]))  # fmt: skip
    chain = sample_tool_chain(driver, domain, 3, seed=0)
    assert chain[-1] == f"{domain}/c" and len(chain) in (2, 3)
    assert sample_tool_chain(driver, domain, 3, seed=5) == sample_tool_chain(
        driver, domain, 3, seed=5
    )


def test_llm_extracted_facts_become_typed_relations(
    driver: neo4j.Driver, domain: str, tmp_path: Path
) -> None:
    """A configured extractor adds typed facts with their chunk as evidence, cached."""

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        text = body["messages"][-1]["content"]
        facts = []
        if "He lived in London" in text:  # the alias resolves to the existing page entity
            facts.append({"subject": "Babbage", "predicate": "Lived In", "object": "London"})
        if "mechanical computer" in text:
            facts.append({"subject": "Analytical Engine", "predicate": "instance of",
                          "object": "Mechanical computer"})  # fmt: skip
        return completion(json.dumps({"facts": facts}))

    corpus = LoadResult(documents=[
        SourceDocument("Charles Babbage", CORPUS.documents[1].text, "t#1", aliases=("Babbage",)),
        *CORPUS.documents[2:4],
    ])  # fmt: skip
    with openai_server(responder) as (url, state):
        client = ChatClient(EndpointConfig(url, "m", backoff_s=0.01))
        first = LLMExtractor(client, tmp_path)
        Ingestor(driver, domain, extractor=first).run(corpus)
        before = snapshot(driver, domain)
        again = LLMExtractor(client, tmp_path)
        Ingestor(driver, domain, extractor=again).run(corpus)
    assert first.calls == len(state.requests) > 0 and again.calls == 0
    assert snapshot(driver, domain) == before  # the cached run writes exactly the same graph
    lived = driver.execute_query(
        "MATCH (a:Entity)-[r:REL {predicate: 'lived_in'}]->(b:Entity {id: $london}) "
        "MATCH (c:Chunk) WHERE c.id IN r.evidence RETURN a.id AS a, c.text AS text",
        london=entity_id(domain, "London"),
    ).records
    assert [r["a"] for r in lived] == [entity_id(domain, "Charles Babbage")]
    assert "He lived in London" in lived[0]["text"]
    concept = driver.execute_query(
        "MATCH (:Entity {id: $engine})-[:REL {predicate: 'instance_of'}]->(c:Entity) "
        "RETURN c.name AS name, c.type AS type",
        engine=entity_id(domain, "Analytical Engine"),
    ).records
    assert [(r["name"], r["type"]) for r in concept] == [("Mechanical computer", "concept")]


def test_triples_and_links_resolve_aliases_to_the_page_entity(
    driver: neo4j.Driver, domain: str
) -> None:
    pages = LoadResult(documents=[
        SourceDocument("Charles Babbage", "Charles Babbage was a mathematician.", "t#0",
                       aliases=("Babbage",)),
        SourceDocument("Analytical Engine", "Designed by Babbage.", "t#1",
                       links=("babbage", "Analytical Engine", "Difference Engine")),
    ])  # fmt: skip
    Ingestor(driver, domain).run(pages)
    facts = LoadResult(triples=[Triple("Babbage", "born_in", "London", "f:1")])
    Ingestor(driver, domain).run(facts)
    babbage, engine = entity_id(domain, "Charles Babbage"), entity_id(domain, "Analytical Engine")
    rels = driver.execute_query(
        "MATCH (a:Entity {domain: $d})-[r:REL]->(b:Entity) RETURN a.id AS a, r.predicate AS p, "
        "b.name AS b ORDER BY p, b",
        d=domain,
    ).records
    assert [(r["a"], r["p"], r["b"]) for r in rels] == [
        (babbage, "born_in", "London"),  # the alias names the page, not a new "Babbage"
        (engine, "links_to", "Charles Babbage"),
        (engine, "links_to", "Difference Engine"),  # an unknown target is a new entity
        (engine, "mentions", "Charles Babbage"),
    ]
    names = driver.execute_query(
        "MATCH (e:Entity {domain: $d}) RETURN e.name AS name ORDER BY name", d=domain
    ).records
    assert [r["name"] for r in names] == [
        "Analytical Engine", "Charles Babbage", "Difference Engine", "London"
    ]  # fmt: skip
    before = snapshot(driver, domain)
    Ingestor(driver, domain).run(facts)
    Ingestor(driver, domain).run(pages)
    assert snapshot(driver, domain) == before  # resolution is stable across runs


def test_deleting_an_unknown_document_is_an_error_and_deletes_nothing(
    driver: neo4j.Driver, domain: str
) -> None:
    from kap.platform.errors import GraphStoreError

    Ingestor(driver, domain).run(CORPUS)
    before = snapshot(driver, domain)
    with pytest.raises(GraphStoreError, match="no document"):
        delete_document(driver, "doc:nope", domain=domain)
    doc = driver.execute_query(
        "MATCH (d:Document {domain: $d}) RETURN d.id AS id LIMIT 1", d=domain
    ).records[0]["id"]
    with pytest.raises(GraphStoreError, match="no document"):  # the right id, the wrong domain
        delete_document(driver, doc, domain=f"{domain}-other")
    assert snapshot(driver, domain) == before


@pytest.mark.slow
def test_a_large_document_is_stored_whole_in_several_transactions(
    driver: neo4j.Driver, domain: str
) -> None:
    """10 MB here (a 50 MB one took 103 s on two cores, in 8 MB transactions, and 0.6 GB)."""
    text = " ".join(
        f"Line {i} of a long page about London and Ada Lovelace." for i in range(180_000)
    )
    page = LoadResult(documents=[SourceDocument("Long Page", text, "big#0"), *CORPUS.documents[:1]])
    stats = Ingestor(driver, domain, max_tx_chars=2_000_000).run(page)
    assert len(text) > 10_000_000 and stats.chunks > 10_000
    rows = driver.execute_query(
        "MATCH (c:Chunk)-[:PART_OF]->(:Document {domain: $d, title: 'Long Page'}) "
        "RETURN c.start AS start, c.end AS end, c.text AS text ORDER BY start",
        d=domain,
    ).records
    assert len(rows) == stats.chunks - 1
    assert all(r["text"] == text[r["start"] : r["end"]] for r in rows)  # verbatim
    assert rows[0]["start"] == 0 and rows[-1]["end"] == len(text)
    assert all(a["end"] > b["start"] for a, b in pairwise(rows))  # overlapping: nothing lost
    nexts = driver.execute_query(
        "MATCH (:Chunk {domain: $d})-[:NEXT]->(:Chunk) RETURN count(*) AS n", d=domain
    ).records[0]["n"]
    assert nexts == len(rows) - 1  # the chain runs across the transactions' seams
