"""The proposer against a small ingested graph in the real Neo4j.

The corpus is built so each behaviour has one region: Alder Vale -> Brisk Water -> Lake Coram
is a sound two-hop chain; Fenwick Hall mentions two pages that lead to two different places
(ambiguous); Greyford reaches the Ladle over two bridges (one question, two paths: near
duplicates); Hollin Cross -> Marrow Fen -> Quarry Sound is a cycle whose last page names the
start (answerable from one chunk).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import neo4j
import pytest

from kap.graphstore.connection import connect
from kap.graphstore.ingest import Ingestor, entity_id
from kap.graphstore.records import LoadResult, SourceDocument
from kap.graphstore.sampling import sample_chains
from kap.graphstore.schema import ensure_schema
from kap.platform.errors import LLMError
from kap.platform.settings import Settings
from kap.workers.proposer import (
    CRITERIA,
    OVERSAMPLE,
    ProposedTask,
    build_task,
    propose,
    read_facts,
)

pytestmark = pytest.mark.integration

PAGES = {
    "Alder Vale": "Alder Vale is a market town on the Brisk Water.",
    "Brisk Water": "The Brisk Water rises on the moor and flows into Lake Coram.",
    "Lake Coram": "Lake Coram is a glacial lake, deep and cold.",
    "Fenwick Hall": "Fenwick Hall was designed by Orla Penn and restored by Tamsin Roe.",
    "Orla Penn": "Orla Penn trained as an architect in Castlemere.",
    "Tamsin Roe": "Tamsin Roe was born in Dunholt.",
    "Castlemere": "Castlemere is a cathedral city.",
    "Dunholt": "Dunholt is a fishing village.",
    "Greyford": "Greyford has two bridges, the Iver Bridge and the Ost Bridge.",
    "Iver Bridge": "The Iver Bridge is a stone arch over the Ladle.",
    "Ost Bridge": "The Ost Bridge is an iron span across the Ladle.",
    "Ladle": "The Ladle is a chalk stream.",
    "Hollin Cross": "Hollin Cross lies at the edge of Marrow Fen.",
    "Marrow Fen": "Marrow Fen drains into Quarry Sound.",
    "Quarry Sound": "Quarry Sound is a sea inlet that reaches Hollin Cross at high tide.",
}
N = 20  # more than there are two-hop chains: every region is proposed


@pytest.fixture(scope="module")
def graph(services: Settings) -> Iterator[tuple[neo4j.Driver, str]]:
    domain = f"test-proposer-{uuid.uuid4().hex[:8]}"
    docs = [SourceDocument(title, text, f"t#{i}") for i, (title, text) in enumerate(PAGES.items())]
    with connect(services) as driver:
        ensure_schema(driver)
        Ingestor(driver, domain).run(LoadResult(documents=docs))
        yield driver, domain
        driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)


@pytest.fixture(scope="module")
def two_hop(graph: tuple[neo4j.Driver, str]) -> list[ProposedTask]:
    driver, domain = graph
    return propose(driver, domain, hops=2, n=N, seed=3)


def by_start(tasks: list[ProposedTask], name: str) -> list[ProposedTask]:
    return [t for t in tasks if t.region["start"] == name]


def test_the_sound_chain_is_accepted_with_a_reason_per_criterion(two_hop: list) -> None:
    (task,) = by_start(two_hop, "Alder Vale")
    assert task.accepted, {k: c.reason for k, c in task.criteria.items()}
    assert tuple(task.criteria) == CRITERIA
    assert all(c.reason for c in task.criteria.values())
    assert task.gold_answer == "Lake Coram"
    assert [h["object"] for h in task.hops] == ["Brisk Water", "Lake Coram"]
    assert task.region["intermediates"][0]["name"] == "Brisk Water"
    assert task.question == (
        "The article on Alder Vale mentions a page, X. Which page does the article on X mention?"
    )
    assert all(task.evidence) and task.kind == "relation_chain"


def test_an_ambiguous_chain_is_rejected_as_not_unambiguous(two_hop: list) -> None:
    tasks = by_start(two_hop, "Fenwick Hall")
    assert tasks  # one kept: both paths ask the same question text
    for task in tasks:
        assert not task.accepted
        assert not task.criteria["unambiguous"].passed
        assert task.criteria["unambiguous"].reason.startswith("2 entities")
        assert all(task.criteria[k].passed for k in CRITERIA if k != "unambiguous")


def test_a_chain_answerable_from_one_chunk_is_not_process_informative(two_hop: list) -> None:
    (task,) = by_start(two_hop, "Hollin Cross")
    verdict = task.criteria["process_informative"]
    assert not verdict.passed and "holds start and answer together" in verdict.reason
    assert task.criteria["unambiguous"].passed


def test_one_hop_requests_are_rejected_as_not_process_informative(graph: tuple) -> None:
    driver, domain = graph
    tasks = propose(driver, domain, hops=1, n=5, seed=0)
    assert tasks
    for task in tasks:
        assert not task.accepted
        assert task.criteria["process_informative"].reason.startswith("1 hop")


def test_questions_never_name_the_answer_or_an_intermediate(graph: tuple, two_hop: list) -> None:
    driver, domain = graph
    three_hop = propose(driver, domain, hops=3, n=N, seed=1)
    assert any(t.accepted for t in two_hop)
    for task in [*two_hop, *three_hop]:
        question = task.question.lower()
        assert task.gold_answer.lower() not in question
        for hop in task.hops[:-1]:
            assert hop["object"].lower() not in question
        assert task.region["start"].lower() in question


def test_proposals_are_deterministic_for_a_seed(graph: tuple, two_hop: list) -> None:
    driver, domain = graph
    assert propose(driver, domain, hops=2, n=N, seed=3) == two_hop
    assert propose(driver, domain, hops=2, n=3, seed=3) == two_hop[:3]


def test_near_duplicates_are_dropped(graph: tuple, two_hop: list) -> None:
    driver, domain = graph
    sampled = sample_chains(driver, domain, 2, n=OVERSAMPLE * N, seed=3, max_tries=400)
    greyford = entity_id(domain, "Greyford")
    assert len([c for c in sampled if c.start == greyford]) == 2  # over both bridges
    assert len(by_start(two_hop, "Greyford")) == 1
    assert len({t.fingerprint for t in two_hop}) == len(two_hop)
    seen = {by_start(two_hop, "Alder Vale")[0].fingerprint}
    again = propose(driver, domain, hops=2, n=N, seed=3, seen=seen)
    assert not by_start(again, "Alder Vale")
    assert len(again) == len(two_hop) - 1


def test_a_relation_gone_since_sampling_makes_the_chain_invalid(graph: tuple) -> None:
    driver, domain = graph
    chain = sample_chains(driver, domain, 2, n=1, seed=3)[0]
    gone = dataclasses.replace(chain.hops[1], rel_id="rel:gone")
    stale = dataclasses.replace(chain, hops=(chain.hops[0], gone))
    task = build_task(stale, read_facts(driver, stale), seed=3)
    assert not task.criteria["valid"].passed and "rel:gone" in task.criteria["valid"].reason


class Rewriter:
    """A stand-in for the LLM: one fixed rewrite per start page."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def rewrite(self, question: str) -> str:
        for start, text in self.texts.items():
            if start in question:
                return text
        raise LLMError("no rewrite for this one")


def test_rewrites_are_used_unless_they_leak(graph: tuple) -> None:
    driver, domain = graph
    rewriter = Rewriter(
        {
            "Alder Vale": "Which page does the page named in Alder Vale's article mention?",
            "Greyford": "Greyford's bridges both cross one river: which, the Ladle?",
            "Fenwick Hall": "Fenwick Hall's article: Orla Penn or Tamsin Roe, where to?",
        }
    )
    tasks = propose(driver, domain, hops=2, n=N, seed=3, rewriter=rewriter)
    (alder,) = by_start(tasks, "Alder Vale")
    assert alder.region["rewrite"] == "rewritten" and alder.accepted
    assert alder.question == rewriter.texts["Alder Vale"]
    (grey,) = by_start(tasks, "Greyford")
    assert grey.region["rewrite"] == "fallback: rewrite names 'Ladle'"
    assert grey.question == grey.region["template"] and "Ladle" not in grey.question
    for fen in by_start(tasks, "Fenwick Hall"):
        middle = fen.region["intermediates"][0]["name"]
        assert fen.region["rewrite"] == f"fallback: rewrite names {middle!r}"
        assert middle not in fen.question
    (hollin,) = by_start(tasks, "Hollin Cross")
    assert hollin.region["rewrite"].startswith("fallback: rewriter failed")
