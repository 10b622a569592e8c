"""The search-domain tools, the scripted solver and `kap eval qa` on the real test Neo4j.

A six-page corpus in the MuSiQue shape, ingested into a private domain with its own evidence
index: one two-hop question (Hello Love -> Hank Snow -> Tennessee) and its distractors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex
from kap.graphstore.indexing import build_index, index_dir
from kap.graphstore.ingest import Ingestor
from kap.graphstore.loaders import load_file
from kap.platform.settings import Settings
from kap.workers.qa import evaluate, summarize
from kap.workers.scripted_policy import ScriptedPolicy
from kap.workers.solver import SolverConfig, StopReason, solve
from kap.workers.tools import ErrorKind, Toolset

pytestmark = pytest.mark.integration

KAP = str(Path(sys.executable).parent / "kap")
PAGES = [
    {"title": "Hello Love (song)", "text": "Hello Love is a 1974 country song performed by "
     "Hank Snow. It was his last number one hit."},
    {"title": "Hank Snow", "text": "Hank Snow was a Canadian-American country singer. He "
     "lived in Tennessee, near Nashville, until he died in 1999."},
    {"title": "Tennessee", "text": "Tennessee is a state in the southeastern United States; "
     "its capital is Nashville."},
    {"title": "Publix", "text": "Publix is a supermarket chain based in Florida."},
    {"title": "Avery County", "text": "Avery County is a county in North Carolina."},
    {"title": "Victoria Falls", "text": "Victoria Falls is a waterfall on the Zambezi River."},
]  # fmt: skip
QUESTION = {
    "id": "q1",
    "question": "Which state did the performer of Hello Love live in?",
    "answer": "Tennessee",
    "answer_aliases": ["TN"],
    "paragraphs": [{"idx": i, "title": p["title"], "paragraph_text": p["text"],
                    "is_supporting": i < 2} for i, p in enumerate(PAGES)],
    "question_decomposition": [
        {"id": 1, "question": "Hello Love >> performer", "answer": "Hank Snow",
         "paragraph_support_idx": 0},
        {"id": 2, "question": "Where did #1 live?", "answer": "Tennessee",
         "paragraph_support_idx": 1},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def corpus(
    driver: neo4j.Driver, domain: str, services: Settings, embedder: Embedder, tmp_path: Path
) -> Iterator[tuple[str, EvidenceIndex]]:
    """The corpus ingested into `domain`, its index saved where `kap` looks for it."""
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(PAGES))
    Ingestor(driver, domain).run(load_file(path))
    index = build_index(driver, domain, embedder)
    directory = index_dir(services.state_dir, domain)
    index.save(directory)
    yield domain, index
    shutil.rmtree(directory, ignore_errors=True)


def call(tool: str, **args: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "type": "function",
        "function": {"name": tool, "arguments": json.dumps(args)},
    }


@pytest.fixture
def tools(driver: neo4j.Driver, corpus: tuple[str, EvidenceIndex], embedder: Embedder) -> Toolset:
    return Toolset(driver, corpus[0], index=corpus[1], embedder=embedder)


def test_search_shows_ranked_previews_that_are_seen_not_read(tools: Toolset) -> None:
    obs = tools.execute(call("search", query="Who performed Hello Love?", k=3))
    results = json.loads(obs.content)["results"]
    assert results[0]["title"] == "Hello Love (song)"
    assert len(results) == 3
    assert [r["chunk_id"] for r in results] == list(obs.seen_chunk_ids)
    assert obs.read_chunk_ids == ()


def test_visit_reads_a_chunk_a_document_or_a_page_by_title(tools: Toolset) -> None:
    hit = json.loads(tools.execute(call("search", query="Hank Snow singer", k=1)).content)
    chunk_id = hit["results"][0]["chunk_id"]
    by_chunk = tools.execute(call("visit", id=chunk_id))
    chunk = json.loads(by_chunk.content)["chunks"][0]
    assert "Tennessee" in chunk["text"]
    assert by_chunk.read_chunk_ids == (chunk_id,)
    by_doc = tools.execute(call("visit", id=chunk["document_id"]))
    assert by_doc.read_chunk_ids == (chunk_id,)
    by_title = tools.execute(call("visit", id="hank snow"))
    assert by_title.read_chunk_ids == (chunk_id,)


def test_visit_of_another_domain_or_nothing_is_an_error(tools: Toolset) -> None:
    obs = tools.execute(call("visit", id="chunk:0000"))
    assert obs.is_error
    assert obs.error_kind is ErrorKind.INVALID


def test_graph_lists_the_entity_facts_with_evidence(tools: Toolset) -> None:
    obs = tools.execute(call("graph", name="Hank Snow"))
    body = json.loads(obs.content)
    assert body["entity"] == "Hank Snow"
    pairs = {(f["subject"], f["object"]) for f in body["facts"]}
    assert ("Hello Love (song)", "Hank Snow") in pairs
    assert ("Hank Snow", "Tennessee") in pairs
    assert all(f["evidence"] for f in body["facts"])
    assert all("Hank Snow" in (f["subject"], f["object"]) for f in body["facts"])
    only = json.loads(tools.execute(call("graph", name="Hank Snow", relation="nope")).content)
    assert only["facts"] == []
    missing = tools.execute(call("graph", name="Nobody At All"))
    assert missing.is_error
    assert missing.error_kind is ErrorKind.FAILED


def test_the_scripted_solver_answers_and_reads_the_evidence(tools: Toolset) -> None:
    result = solve(str(QUESTION["question"]), ScriptedPolicy(), tools, SolverConfig())
    assert result.stop_reason is StopReason.ANSWERED
    assert result.answer == "Tennessee"
    names = [s.tool_calls[0]["function"]["name"] for s in result.steps]
    assert {"search", "visit", "graph", "answer"} <= set(names)
    assert not any(s.checks["error"] for s in result.steps)


def test_the_scripted_solver_follows_a_proposed_chain_through_the_graph(tools: Toolset) -> None:
    question = ("The article on Hello Love (song) mentions a page, X. "
                "Which page does the article on X mention?")  # fmt: skip
    result = solve(question, ScriptedPolicy(k=3), tools, SolverConfig(max_turns=30))
    assert result.stop_reason is StopReason.ANSWERED and result.answer == "Tennessee"
    called = [c["function"]["name"] for s in result.steps for c in s.tool_calls]
    assert called.count("graph") >= 2  # the start, then X (Hank Snow)
    read_titles = {
        json.loads(m["content"])["chunks"][0]["title"]
        for m in result.messages
        if m["role"] == "tool" and '"chunks"' in m["content"]
    }
    assert {"Hello Love (song)", "Hank Snow"} <= read_titles  # it read each hop's evidence


def test_evaluate_scores_the_question(
    driver: neo4j.Driver, tools: Toolset, corpus: tuple[str, EvidenceIndex]
) -> None:
    outcomes = evaluate(driver, corpus[0], [QUESTION], policy=ScriptedPolicy, tools=tools,
                        config=SolverConfig())  # fmt: skip
    assert summarize(outcomes) == {"n": 1, "exact_match": 1.0, "f1": 1.0, "evidence_recall": 1.0}
    assert outcomes[0].verdict.components["all_hops_supported"] == 1.0


def test_kap_eval_qa_prints_the_figures_as_json(
    corpus: tuple[str, EvidenceIndex], kap_env: dict[str, str], tmp_path: Path
) -> None:
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([QUESTION, {**QUESTION, "id": "q2", "answer": "Florida",
                                                "answer_aliases": []}]))  # fmt: skip
    result = subprocess.run(
        [KAP, "eval", "qa", str(questions), "--domain", corpus[0], "--solver", "scripted",
         "--json"], env=kap_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures == {"n": 2, "exact_match": 0.5, "f1": 0.5, "evidence_recall": 1.0}
    limited = subprocess.run(
        [KAP, "eval", "qa", str(questions), "--domain", corpus[0], "--limit", "1"],
        env=kap_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert limited.returncode == 0, limited.stderr
    assert "exact_match=1.000" in limited.stdout


def test_kap_eval_qa_without_an_index_says_how_to_build_one(
    kap_env: dict[str, str], tmp_path: Path
) -> None:
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([QUESTION]))
    result = subprocess.run([KAP, "eval", "qa", str(questions), "--domain", "no-such-domain"],
                            env=kap_env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert "kap index build" in result.stderr
