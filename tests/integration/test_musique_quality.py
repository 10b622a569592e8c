"""Floors on how well the KAG built from the real MuSiQue corpus serves its 100 questions.

Measured with `benchmarks/musique_kag.py` (strict 0.150, bridged 0.260, recall@10 0.882 on
2,019 chunks); the floors sit a little below so that a regression fails and noise does not.
Embedding the whole corpus takes one to two minutes on two CPU cores.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest

from kap.graphstore.embed import Embedder
from kap.graphstore.indexing import build_index
from kap.graphstore.ingest import Ingestor
from kap.graphstore.loaders import load_file
from kap.graphstore.quality import chain_recovery, evidence_recall

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "musique"


@pytest.fixture(scope="module")
def questions() -> list[dict[str, Any]]:
    return json.loads((DATA / "questions.json").read_text())


@pytest.fixture(scope="module")
def corpus_domain(driver: neo4j.Driver) -> Iterator[str]:
    domain = f"test-quality-{uuid.uuid4().hex[:8]}"
    Ingestor(driver, domain).run(load_file(DATA / "corpus.json"))
    yield domain
    driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)


def test_gold_hop_chains_are_linked_in_the_graph(
    driver: neo4j.Driver, corpus_domain: str, questions: list[dict[str, Any]]
) -> None:
    strict, bridged = chain_recovery(driver, corpus_domain, questions)
    assert strict >= 0.12
    assert bridged >= 0.22
    assert bridged >= strict  # a direct fact is also a bridge


def test_sub_questions_find_their_supporting_paragraph(
    driver: neo4j.Driver, corpus_domain: str, questions: list[dict[str, Any]]
) -> None:
    embedder = Embedder()
    index = build_index(driver, corpus_domain, embedder)
    recall, sub_questions = evidence_recall(driver, corpus_domain, questions, index, embedder)
    assert sub_questions == 237
    assert recall >= 0.85
