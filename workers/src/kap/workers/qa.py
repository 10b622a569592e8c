"""Solver + verifier on external multi-hop questions in the MuSiQue format.

    kap eval qa QUESTIONS.json --domain D --solver scripted [--k K] [--limit N] [--json]

Each question's gold hops come from its decomposition: hop i's evidence is the chunks of its
supporting paragraph, found in the graph by the paragraph's content id (title and text, as
ingestion and `kap.graphstore.quality` compute it). Figures:
- `exact_match`, `f1`: the verifier's, averaged over questions;
- `evidence_recall`: over every question's distinct supporting paragraphs, the share the
  solver read (a paragraph counts as read when the solver visited one of its chunks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import neo4j

from kap.graphstore.quality import DOC_CHUNKS, gold_hops
from kap.workers.policy import Policy
from kap.workers.solver import SolverConfig, Tools, solve
from kap.workers.verifier import Gold, Judge, Verdict, verify

Question = dict[str, Any]


@dataclass(frozen=True)
class Supported:
    """A question's gold, and the chunk ids of each of its distinct supporting paragraphs."""

    gold: Gold
    paragraphs: tuple[frozenset[str], ...]


@dataclass(frozen=True)
class Outcome:
    id: str
    question: str
    prediction: str | None
    gold: str
    verdict: Verdict
    paragraphs: int
    paragraphs_read: int
    turns: int
    stop_reason: str


def supported(
    driver: neo4j.Driver, domain: str, question: Question, *, database: str = "neo4j"
) -> Supported:
    hops = gold_hops(question, domain)
    chunks: dict[str, frozenset[str]] = {}
    for hop in hops:
        if hop.document_id not in chunks:
            rows = driver.execute_query(DOC_CHUNKS, id=hop.document_id, database_=database)
            chunks[hop.document_id] = frozenset(rows.records[0]["ids"])
    gold = Gold(
        question["question"],
        str(question["answer"]),
        tuple(str(a) for a in question.get("answer_aliases") or ()),
        tuple(chunks[h.document_id] for h in hops),
    )
    return Supported(gold, tuple(chunks.values()))


def evaluate(
    driver: neo4j.Driver,
    domain: str,
    questions: Iterable[Question],
    *,
    policy: Callable[[], Policy],
    tools: Tools,
    config: SolverConfig,
    judge: Judge | None = None,
    database: str = "neo4j",
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Solve and verify each question with a fresh policy; gold is read only for the verdict."""
    outcomes = []
    for question in questions:
        result = solve(question["question"], policy(), tools, config)
        truth = supported(driver, domain, question, database=database)
        read = set(result.read_chunk_ids)
        verdict = verify(truth.gold, result.answer, answered=result.answered,
                         read_chunk_ids=read, judge=judge)  # fmt: skip
        outcome = Outcome(
            str(question.get("id", "")),
            question["question"],
            result.answer,
            truth.gold.answer,
            verdict,
            len(truth.paragraphs),
            sum(bool(p & read) for p in truth.paragraphs),
            result.turns,
            str(result.stop_reason),
        )
        outcomes.append(outcome)
        if progress:
            progress(outcome)
    return outcomes


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    """`{"n", "exact_match", "f1", "evidence_recall"}` over the outcomes."""
    n = len(outcomes)
    paragraphs = sum(o.paragraphs for o in outcomes)
    return {
        "n": n,
        "exact_match": sum(o.verdict.components["exact_match"] for o in outcomes) / n if n else 0.0,
        "f1": sum(o.verdict.components["f1"] for o in outcomes) / n if n else 0.0,
        "evidence_recall": (
            sum(o.paragraphs_read for o in outcomes) / paragraphs if paragraphs else 0.0
        ),
    }
