"""The proposer's pure parts: templates, obfuscation, fingerprints, near-duplicates, criteria."""

from __future__ import annotations

import dataclasses
from http import HTTPStatus

import pytest

from kap.graphstore.sampling import Chain, Hop
from kap.platform.errors import LLMError
from kap.platform.llm import ChatClient, EndpointConfig
from kap.workers.proposer import (
    CRITERIA,
    GraphFacts,
    LLMRewriter,
    build_task,
    checked_rewrite,
    drop_near_duplicates,
    fingerprint,
    fold,
    jaccard,
    judge,
    names_in,
    render_question,
    shingles,
)
from tests.support.openai_server import completion, openai_server

NAMES = {"e:s": "Alder Vale", "e:x": "Brisk Water", "e:y": "Coram Fell", "e:a": "Lake Dunholt"}


def hop(subject: str, obj: str, *, evidence: tuple[str, ...] = ("c1",)) -> Hop:
    return Hop(subject, NAMES[subject], "mentions", obj, NAMES[obj], f"r:{subject}-{obj}", evidence)


CHAIN = Chain("d", (hop("e:s", "e:x", evidence=("c1",)), hop("e:x", "e:a", evidence=("c2", "c3"))))


def facts(chain: Chain = CHAIN, **overrides: object) -> GraphFacts:
    """What the graph would say about a sound chain; `overrides` break one thing."""
    base = GraphFacts(
        names={i: (n,) for i, n in NAMES.items()} | {"e:a": ("Lake Dunholt", "Dunholt Water")},
        relations={h.rel_id: (h.subject_id, h.predicate, h.object_id) for h in chain.hops},
        chunk_texts={
            "c1": "Alder Vale is a town on the Brisk Water.",
            "c2": "The Brisk Water rises in the hills.",
            "c3": "The Brisk Water flows into Lake Dunholt's northern bay.",
        },
        shared_chunks=(),
        satisfying=1,
    )
    return dataclasses.replace(base, **overrides)


QUESTION = render_question("Alder Vale", CHAIN.predicates)


# ---- templates and obfuscation ----


def test_templates_name_only_the_start_and_letter_the_intermediates() -> None:
    assert QUESTION == (
        "The article on Alder Vale mentions a page, X. Which page does the article on X mention?"
    )
    three = render_question("Alder Vale", ["links_to", "mentions", "born_in"])
    assert three == (
        "The article on Alder Vale links to a page, X. The article on X mentions a page, Y. "
        "Where was Y born?"
    )


def test_unknown_predicates_read_through_the_generic_template() -> None:
    question = render_question("Ada Lovelace", ["collaborated_with", "has_spouse"])
    assert question == (
        'Ada Lovelace collaborated with someone, X. To which entity is X related by "has spouse"?'
    )
    with pytest.raises(ValueError, match="at most"):
        render_question("S", ["mentions"] * 7)


def test_folding_matches_names_at_word_boundaries_through_punctuation() -> None:
    assert fold("The  South-West Africa's (FM)") == "south west africa s fm"
    assert names_in("South-West Africa was a mandate.", ["West Africa", "Africa"]) == [
        "West Africa",
        "Africa",
    ]
    assert names_in("Titov was here", ["Tito"]) == []
    assert names_in("anything", ["", "The"]) == []  # names that fold to nothing never match


# ---- fingerprints and near-duplicates ----


def test_fingerprint_keys_on_start_predicates_and_answer_only() -> None:
    key = fingerprint("d", "e:s", ["mentions", "mentions"], "e:a")
    assert key == fingerprint("d", "e:s", ("mentions", "mentions"), "e:a")
    assert key != fingerprint("d", "e:s", ["mentions", "links_to"], "e:a")
    assert key != fingerprint("d", "e:s", ["mentions", "mentions"], "e:y")
    assert key != fingerprint("other", "e:s", ["mentions", "mentions"], "e:a")
    assert key.startswith("task:")


def test_templates_that_differ_in_the_start_are_not_near_duplicates() -> None:
    a = shingles(render_question("Alder Vale", ["mentions"] * 3))
    b = shingles(render_question("Coram Fell", ["mentions"] * 3))
    assert jaccard(a, b) < 0.9
    assert jaccard(a, a) == 1.0
    assert shingles("one two") == frozenset({("one", "two")})


def test_near_duplicates_are_dropped_first_one_kept() -> None:
    task = build_task(CHAIN, facts(), seed=0)
    other_path = Chain("d", (hop("e:s", "e:y"), hop("e:y", "e:a")))  # same ask, other middle
    twin = build_task(other_path, facts(other_path), seed=0)
    assert twin.fingerprint == task.fingerprint
    reworded = dataclasses.replace(task, fingerprint="task:other", question=task.question + "!")
    different = dataclasses.replace(
        task, fingerprint="task:new", question=render_question("Coram Fell", CHAIN.predicates)
    )
    kept = list(drop_near_duplicates([task, twin, reworded, different]))
    assert kept == [task, different]
    assert list(drop_near_duplicates([task, different], seen={task.fingerprint})) == [different]


# ---- criteria on hand-built chains ----


def test_a_sound_chain_passes_all_five_with_reasons() -> None:
    criteria = judge(CHAIN, QUESTION, facts())
    assert tuple(criteria) == CRITERIA
    assert all(c.passed for c in criteria.values())
    assert "Lake Dunholt" in criteria["verifiable"].reason and "c3" in criteria["verifiable"].reason
    assert criteria["unambiguous"].reason.startswith("exactly one")


def test_verifiable_accepts_an_alias_and_rejects_evidence_without_the_answer() -> None:
    alias_only = {"c1": "x", "c2": "y", "c3": "It drains to Dunholt Water."}
    assert judge(CHAIN, QUESTION, facts(chunk_texts=alias_only))["verifiable"].passed
    missing = {"c1": "x", "c2": "y", "c3": "The river ends somewhere."}
    verdict = judge(CHAIN, QUESTION, facts(chunk_texts=missing))["verifiable"]
    assert not verdict.passed and "Lake Dunholt" in verdict.reason


def test_valid_rejects_a_vanished_or_rewired_relation() -> None:
    gone = judge(CHAIN, QUESTION, facts(relations={}))["valid"]
    assert not gone.passed and "no longer" in gone.reason
    rewired = {h.rel_id: (h.subject_id, h.predicate, "e:y") for h in CHAIN.hops}
    assert not judge(CHAIN, QUESTION, facts(relations=rewired))["valid"].passed


def test_process_informative_rejects_one_hop_shared_chunks_and_leaks() -> None:
    one = Chain("d", CHAIN.hops[:1])
    verdict = judge(one, "Which page does the article on Alder Vale mention?", facts(one))
    assert not verdict["process_informative"].passed
    assert "1 hop" in verdict["process_informative"].reason
    shared = judge(CHAIN, QUESTION, facts(shared_chunks=("c9",)))["process_informative"]
    assert not shared.passed and "c9" in shared.reason
    texts = facts().chunk_texts | {"c1": "Alder Vale lies above Lake Dunholt."}
    both = judge(CHAIN, QUESTION, facts(chunk_texts=texts))["process_informative"]
    assert not both.passed and "c1" in both.reason
    leak = judge(CHAIN, QUESTION + " (Dunholt Water?)", facts())["process_informative"]
    assert not leak.passed and "answer" in leak.reason
    named = judge(CHAIN, QUESTION + " Brisk Water", facts())["process_informative"]
    assert not named.passed and "intermediate 'Brisk Water'" in named.reason


def test_evidence_covering_needs_a_chunk_per_hop_that_exists() -> None:
    bare = Chain("d", (CHAIN.hops[0], dataclasses.replace(CHAIN.hops[1], evidence=())))
    verdict = judge(bare, QUESTION, facts(bare))["evidence_covering"]
    assert not verdict.passed and "hop 2" in verdict.reason
    lost = facts(chunk_texts={"c1": "Alder Vale", "c3": "Lake Dunholt"})
    assert "c2" in judge(CHAIN, QUESTION, lost)["evidence_covering"].reason


@pytest.mark.parametrize("count", [0, 1, 3])
def test_unambiguous_needs_exactly_one_satisfying_entity(count: int) -> None:
    verdict = judge(CHAIN, QUESTION, facts(satisfying=count))["unambiguous"]
    assert verdict.passed is (count == 1)
    assert verdict.reason.startswith("exactly one" if count == 1 else f"{count} entities")


def test_build_task_fields_are_json_ready() -> None:
    task = build_task(CHAIN, facts(), seed=5)
    assert task.accepted and task.kind == "relation_chain"
    assert (task.gold_answer, task.aliases) == ("Lake Dunholt", ("Dunholt Water",))
    assert task.evidence == (("c1",), ("c2", "c3"))
    assert task.hops[1] == {
        "subject_id": "e:x",
        "subject": "Brisk Water",
        "predicate": "mentions",
        "object_id": "e:a",
        "object": "Lake Dunholt",
        "rel_id": "r:e:x-e:a",
    }
    assert task.region["intermediates"] == [{"label": "X", "id": "e:x", "name": "Brisk Water"}]
    assert (task.region["start_id"], task.region["k"], task.region["seed"]) == ("e:s", 2, 5)
    assert not dataclasses.replace(
        task, criteria=judge(CHAIN, QUESTION, facts(satisfying=2))
    ).accepted


# ---- rewriting ----


class Fixed:
    def __init__(self, text: str) -> None:
        self.text = text

    def rewrite(self, question: str) -> str:
        return self.text


class Broken:
    def rewrite(self, question: str) -> str:
        raise LLMError("endpoint down")


HIDDEN = ["Lake Dunholt", "Brisk Water"]


@pytest.mark.parametrize(
    ("rewriter", "outcome"),
    [
        (Fixed("Which page does the page Alder Vale's article mentions mention?"), "rewritten"),
        (Fixed("Is it Lake Dunholt, via Alder Vale?"), "fallback: rewrite names 'Lake Dunholt'"),
        (Fixed("Alder Vale's article names the brisk-water page..."), "fallback: rewrite names"),
        (Fixed("Which page is it?"), "fallback: rewrite drops the start entity"),
        (Fixed("   "), "fallback: empty rewrite"),
        (Broken(), "fallback: rewriter failed (endpoint down)"),
        (None, "none"),
    ],
)
def test_rewrites_that_leak_or_lose_the_start_fall_back_to_the_template(
    rewriter: Fixed | Broken | None, outcome: str
) -> None:
    question, said = checked_rewrite(QUESTION, rewriter, start=["Alder Vale"], hidden=HIDDEN)
    assert said.startswith(outcome)
    expected = rewriter.text if isinstance(rewriter, Fixed) and said == "rewritten" else QUESTION
    assert question == expected


def test_llm_rewriter_sends_the_template_and_returns_the_reply() -> None:
    fluent = "Which page is mentioned by the page that Alder Vale's article mentions?"
    server = openai_server(lambda body: completion(f"  {fluent}\n"))
    with server as (url, state), ChatClient(EndpointConfig(url, "m")) as client:
        task = build_task(CHAIN, facts(), seed=0, rewriter=LLMRewriter(client))
    assert task.question == fluent and task.region["rewrite"] == "rewritten"
    assert task.region["template"] == QUESTION and task.accepted
    assert QUESTION in state.requests[0]["messages"][0]["content"]


def test_llm_rewriter_failure_keeps_the_template() -> None:
    server = openai_server(lambda body: HTTPStatus.BAD_REQUEST)
    with server as (url, _), ChatClient(EndpointConfig(url, "m", max_retries=0)) as client:
        task = build_task(CHAIN, facts(), seed=0, rewriter=LLMRewriter(client))
    assert task.question == QUESTION and task.region["rewrite"].startswith("fallback")
