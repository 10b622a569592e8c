"""The parts of curation that need no database: the statement check, hashes, n-gram overlap."""

from __future__ import annotations

from typing import Any

import pytest

from kap.platform.curation.audit import EvalItem, audit, ngrams, record_text, tokens
from kap.platform.curation.conversations import content_hash, item_hash
from kap.platform.curation.query import statement_of
from kap.platform.errors import QueryRefused


@pytest.mark.parametrize(
    ("sql", "body"),
    [
        ("SELECT 1;", "SELECT 1"),
        ("  with x as (select 1) select * from x ;; ", "with x as (select 1) select * from x"),
        ("-- a comment\nVALUES (1)", "-- a comment\nVALUES (1)"),
        ("/* multi\nline */ TABLE tasks", "/* multi\nline */ TABLE tasks"),
        ("(SELECT 1) UNION (SELECT 2)", "(SELECT 1) UNION (SELECT 2)"),
    ],
)
def test_queries_pass_the_text_check(sql: str, body: str) -> None:
    assert statement_of(sql) == body


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("DROP TABLE x", "DROP"),
        ("/* SELECT */ DELETE FROM x", "DELETE"),
        ("-- SELECT\nTRUNCATE x", "TRUNCATE"),
        ("copy x to program 'id'", "COPY"),
        ("EXPLAIN ANALYZE DELETE FROM x", "EXPLAIN"),
        ("CALL p()", "CALL"),
        ("DO $$ BEGIN END $$", "DO"),
        ("LISTEN x", "LISTEN"),
    ],
)
def test_other_statements_are_refused_by_name(sql: str, keyword: str) -> None:
    with pytest.raises(QueryRefused, match=f"not {keyword}"):
        statement_of(sql)


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- only a comment", "/* nothing */"])
def test_empty_queries_are_refused(sql: str) -> None:
    with pytest.raises(QueryRefused, match="empty query"):
        statement_of(sql)


def record(text: str, *, tool: str = "passage") -> dict[str, Any]:
    return {
        "trajectory_id": "t1",
        "domain": "d",
        "tools": None,
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "search",
                                                             "arguments": '{"query": "q"}'}}]},
            {"role": "tool", "tool_call_id": "c", "content": tool},
        ],
    }  # fmt: skip


def test_hashes_follow_content_and_order() -> None:
    a, b = record("one"), record("two")
    assert item_hash(a) == item_hash(record("one")) != item_hash(b)
    assert item_hash({**a, "position": 9, "dataset": "x@1"}) == item_hash(a)  # not content
    assert content_hash([item_hash(a), item_hash(b)]) != content_hash([item_hash(b), item_hash(a)])
    assert len(content_hash([])) == 64


def test_ngrams_and_tokens() -> None:
    assert tokens("The Seine, in PARIS!") == ["the", "seine", "in", "paris"]
    assert ngrams(["a", "b", "c"], 2) == {("a", "b"), ("b", "c")}
    assert ngrams(["a"], 3) == {("a",)}  # shorter than n: itself
    assert ngrams([], 3) == set()


def test_record_text_leaves_out_observations_unless_asked() -> None:
    rec = record("question", tool="the retrieved passage")
    assert "retrieved" not in record_text(rec) and '"query"' in record_text(rec)
    assert "retrieved" in record_text(rec, observations=True)


def test_overlap_is_the_share_of_the_eval_items_ngrams() -> None:
    question = "one two three four five six seven eight nine ten"  # 3 8-grams
    evaluation = [EvalItem("e", question, "")]
    half = "one two three four five six seven eight nine"  # 2 of 3
    report = audit([{**record(half), "position": 0}], evaluation, n=8, threshold=0.5)
    assert [(h.position, round(h.overlap, 3)) for h in report.flagged] == [(0, 0.667)]
    assert not audit([record(half)], evaluation, n=8, threshold=0.7).flagged
    # in the observation only: not a leak unless observations are audited
    hidden = record("unrelated", tool=question)
    assert not audit([hidden], evaluation).flagged
    assert audit([hidden], evaluation, observations=True).flagged
    # a short eval question (under n words) matches as a whole
    short = [EvalItem("s", "Who wrote Dune?", "")]
    assert audit([record("tell me who wrote dune please")], short).flagged


@pytest.mark.parametrize(("n", "threshold"), [(0, 0.5), (8, 0.0), (8, 1.5)])
def test_bad_audit_parameters_are_named(n: int, threshold: float) -> None:
    from kap.platform.errors import CurationError

    with pytest.raises(CurationError, match="must be"):
        audit([], [EvalItem("e", "q", "")], n=n, threshold=threshold)
