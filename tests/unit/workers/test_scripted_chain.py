"""The scripted policy's chain mode, on its pure pieces."""

from __future__ import annotations

from kap.workers.scripted_policy import chain_answer, outgoing, placeholders

Q = "The article on Alder Vale mentions a page, X. Which page does the article on X mention?"


def test_placeholders_are_the_unnamed_intermediates() -> None:
    assert placeholders(Q) == ["X"]
    assert placeholders("A on X, then Y. Which Z?") == ["X", "Y", "Z"]
    assert placeholders("Who founded IBM?") == []


def test_outgoing_keeps_the_facts_the_question_asks_for() -> None:
    facts = [
        {"subject": "Alder Vale", "predicate": "mentions", "object": "River Test"},
        {"subject": "Alder Vale", "predicate": "founded_by", "object": "Ada"},
        {"subject": "Other", "predicate": "mentions", "object": "Alder Vale"},  # incoming
    ]
    assert [f["object"] for f in outgoing(facts, "Alder Vale", Q)] == ["River Test"]
    # a question that names no predicate keeps every outgoing fact
    assert len(outgoing(facts, "Alder Vale", "Where does X lead?")) == 2


def test_the_answer_is_the_end_most_paths_reach() -> None:
    paths = [[{"object": "a"}, {"object": "b"}], [{"object": "c"}, {"object": "d"}],
             [{"object": "e"}, {"object": "d"}]]  # fmt: skip
    assert chain_answer(paths) == "d"
