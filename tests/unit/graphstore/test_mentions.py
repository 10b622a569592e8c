"""The Aho-Corasick mention matcher: word boundaries, folding, one-word names' casing."""

from __future__ import annotations

import pytest

from kap.graphstore.mentions import MentionMatcher, fold_with_offsets
from kap.graphstore.text import normalize_name

MATCHER = MentionMatcher(
    {"Red": ["red"], "Red Army": ["army"], "Tito": ["tito"], "Köln": ["koeln"], "It": ["it"]}
)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Red was released in 1994.", {"red"}),
        ("She drove a red car.", set()),  # the common word, not the page
        ("the red army crossed", {"army"}),  # several words: the name, whatever the case
        ("Titov met Tito.", {"tito"}),  # word boundaries: not inside "Titov"
        ("KÖLN and Köln", {"koeln"}),  # casefolded
        ("It rained.", set()),  # too short to link on
        ("", set()),
    ],
)
def test_find(text: str, found: set[str]) -> None:
    assert MATCHER.find(text) == found


@pytest.mark.parametrize("text", ["Straße  in\n Köln", "ﬁne  Red", "x\u00a0\u2028y", "İstanbul"])
def test_folding_matches_normalize_name_and_keeps_origins(text: str) -> None:
    folded, origin = fold_with_offsets(text)
    assert folded.strip() == normalize_name(text)
    assert len(origin) == len(folded)
    assert origin == sorted(origin)
