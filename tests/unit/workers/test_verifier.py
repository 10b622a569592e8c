"""The verifier's answer checks and reward components against hand-computed cases."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kap.workers.verifier import (
    Gold,
    RewardWeights,
    best_f1,
    evidence_components,
    exact_match,
    normalize_answer,
    numeric_match,
    token_f1,
    verify,
)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Anglican Communion", "anglican communion"),
        ("  G. Stanley   Hall! ", "g stanley hall"),
        ("an apple, a pear", "apple pear"),
        ("Theatre", "theatre"),  # 'the' only as a word
        ("", ""),
    ],
)
def test_normalization_is_squad_style(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_exact_match_uses_answer_and_aliases() -> None:
    assert exact_match("the anglican communion.", ["the Anglican Communion"]) == 1.0
    assert exact_match("Stanley Hall", ["G. Stanley Hall", "Stanley Hall"]) == 1.0
    assert exact_match("Hall", ["G. Stanley Hall"]) == 0.0


def test_token_f1_by_hand() -> None:
    # pred {g, stanley, hall, jr}, gold {g, stanley, hall}: P = 3/4, R = 1, F1 = 6/7
    assert token_f1("G. Stanley Hall Jr", "G. Stanley Hall") == pytest.approx(6 / 7)
    # pred {avery}, gold {avery, county}: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("Avery", "Avery County") == pytest.approx(2 / 3)
    assert token_f1("Anson County", "Avery County") == pytest.approx(0.5)
    assert token_f1("nothing", "Avery County") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after normalization
    assert best_f1("Avery", ["Karl Renner", "Avery County"]) == pytest.approx(2 / 3)


def test_numeric_tolerance() -> None:
    assert numeric_match("35 stores", ["35"]) == 1.0
    assert numeric_match("about 6.8 inches", ["6.8 inches"]) == 1.0
    assert numeric_match("1,234", ["1234"]) == 1.0
    assert numeric_match("1000", ["1005"], rel_tol=0.01) == 1.0  # within 1 %
    assert numeric_match("35.2", ["35"]) == 1.0  # 0.2 / 35 = 0.57 %
    assert numeric_match("36", ["35"]) == 0.0  # 2.9 %
    assert numeric_match("no digits", ["35"]) == 0.0


def test_evidence_components_per_hop() -> None:
    hops = [{"a", "b"}, {"c"}, {"d", "e"}]
    got = evidence_components(hops, {"a", "c"})
    assert got["evidence_share"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert got["evidence_covered"] == pytest.approx(2 / 3)
    assert got["all_hops_supported"] == 0.0
    assert evidence_components(hops, {"b", "c", "e"})["all_hops_supported"] == 1.0


GOLD = Gold("Who?", "Victoria Falls", ("Mosi-oa-Tunya",), (frozenset({"c1"}), frozenset({"c2"})))


def test_a_right_answer_with_all_evidence_gets_the_full_reward() -> None:
    verdict = verify(GOLD, "victoria falls", answered=True, read_chunk_ids={"c1", "c2"})
    assert verdict.correct
    assert verdict.components["exact_match"] == verdict.components["f1"] == 1.0
    assert verdict.components["format"] == 1.0
    assert verdict.reward == pytest.approx(1.0)


def test_components_are_named_and_weighted() -> None:
    verdict = verify(GOLD, "Hopetoun Falls", answered=True, read_chunk_ids={"c1"})
    assert not verdict.correct
    assert verdict.components["f1"] == pytest.approx(0.5)
    assert verdict.components["evidence_covered"] == 0.5
    w = RewardWeights()
    assert verdict.reward == pytest.approx(w.evidence * 0.5 + w.format * 1.0)


def test_format_needs_the_answer_tool_and_a_non_empty_answer() -> None:
    assert (
        verify(GOLD, "Victoria Falls", answered=False, read_chunk_ids=()).components["format"]
        == 0.0
    )
    none = verify(GOLD, None, answered=True, read_chunk_ids=())
    assert none.components["format"] == 0.0
    assert none.components["exact_match"] == 0.0
    assert not none.correct


def test_the_judge_hook_can_accept_a_paraphrase() -> None:
    asked: list[tuple[str, str]] = []

    def judge(question: str, prediction: str, golds: Sequence[str]) -> bool | None:
        asked.append((question, prediction))
        return True

    verdict = verify(GOLD, "the falls on the Zambezi", answered=True, read_chunk_ids=(),
                     judge=judge)  # fmt: skip
    assert asked == [("Who?", "the falls on the Zambezi")]
    assert verdict.correct
    assert verdict.components["judge"] == 1.0
    assert verdict.components["exact_match"] == 0.0


def test_no_judge_verdict_is_not_correct() -> None:
    verdict = verify(GOLD, "something", answered=True, read_chunk_ids=(),
                     judge=lambda *_: None)  # fmt: skip
    assert not verdict.correct
    assert verdict.details["judge"] == "no verdict"
