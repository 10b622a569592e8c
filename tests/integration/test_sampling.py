"""Region sampling over a small ingested graph in the real Neo4j."""

from __future__ import annotations

import pytest

from kap.graphstore.ingest import entity_id
from kap.graphstore.sampling import count_satisfying, neighbourhood, random_walk, sample_chains
from kap.platform.errors import GraphStoreError

pytestmark = pytest.mark.integration


def test_chains_are_valid_paths_with_evidence_for_every_hop(graph: tuple) -> None:
    driver, domain = graph
    chains = sample_chains(driver, domain, 2, n=5, seed=7)
    assert chains
    for chain in chains:
        assert len(chain.hops) == 2
        assert chain.hops[0].object_id == chain.hops[1].subject_id  # hops connect
        assert len({chain.start, *(h.object_id for h in chain.hops)}) == 3  # no revisits
        for hop in chain.hops:
            assert hop.evidence
            texts = driver.execute_query(
                "MATCH (c:Chunk) WHERE c.id IN $ids RETURN c.text AS t", ids=list(hop.evidence)
            ).records
            assert len(texts) == len(hop.evidence)  # every cited chunk exists


def test_sampling_is_seeded(graph: tuple) -> None:
    driver, domain = graph
    first = sample_chains(driver, domain, 2, n=3, seed=11)
    assert sample_chains(driver, domain, 2, n=3, seed=11) == first
    assert random_walk(driver, domain, 4, seed=3) == random_walk(driver, domain, 4, seed=3)


def test_prefer_unexplored_avoids_covered_starts(graph: tuple) -> None:
    driver, domain = graph
    ada = entity_id(domain, "Ada Lovelace")
    driver.execute_query(
        "MATCH (e:Entity {domain: $d}) WHERE e.id <> $ada SET e.coverage = 10000", d=domain, ada=ada
    )  # fmt: skip
    try:
        chains = sample_chains(driver, domain, 1, n=20, seed=1, prefer_unexplored=True)
        starts = [c.start for c in chains]
        assert starts.count(ada) >= len(starts) // 2
    finally:
        driver.execute_query("MATCH (e:Entity {domain: $d}) REMOVE e.coverage", d=domain)


def test_uniqueness_counts_the_entities_a_chain_reaches(graph: tuple) -> None:
    driver, domain = graph
    ada = entity_id(domain, "Ada Lovelace")
    assert count_satisfying(driver, ada, ("collaborated_with",)) == 1
    assert count_satisfying(driver, ada, ("mentions",)) >= 2  # Babbage, the Engine, London
    assert count_satisfying(driver, ada, ("no_such_predicate",)) == 0


def test_neighbourhood_grows_with_hops(graph: tuple) -> None:
    driver, domain = graph
    engine = entity_id(domain, "Analytical Engine")
    one = neighbourhood(driver, engine, 1)
    two = neighbourhood(driver, engine, 2)
    assert {n["id"] for n in one["nodes"]} < {n["id"] for n in two["nodes"]}
    assert all(r["evidence"] for r in two["relations"])
    with pytest.raises(GraphStoreError, match="hops"):
        neighbourhood(driver, engine, 0)
    with pytest.raises(GraphStoreError, match="no entity"):
        neighbourhood(driver, "entity:nope", 1)


def test_find_entity_by_name_alias_or_hostile_text(graph: tuple) -> None:
    from kap.graphstore.sampling import find_entity
    from tests.integration.test_ingest import HOSTILE

    driver, domain = graph
    assert find_entity(driver, "  ada   LOVELACE ", domain=domain)["name"] == "Ada Lovelace"
    assert find_entity(driver, HOSTILE, domain=domain)["name"] == HOSTILE
    assert find_entity(driver, "Analytical", domain=domain)["name"] == "Analytical Engine"
    with pytest.raises(GraphStoreError, match="no entity named"):
        find_entity(driver, 'zzz" OR *:* ) AND (', domain=domain)
