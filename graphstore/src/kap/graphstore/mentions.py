"""Finds known entity names in chunk text with one Aho-Corasick automaton over all names.

One pass over a chunk finds every title and alias it mentions, whatever the number of names
(a regex per title would be O(titles x text)). Matching is on normalized text (NFKC,
casefolded) and only at word boundaries, so "Tito" does not match inside "Titov". A
one-word name must also be capitalized where it occurs: the page "Red" is mentioned by "Red
was released in 1994", not by "a red car" (common words as titles made most of the noisy
links in MuSiQue).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

import ahocorasick

from kap.graphstore.text import normalize_name


def fold_with_offsets(text: str) -> tuple[str, list[int]]:
    """`normalize_name(text)` (up to edge whitespace), and for each of its characters the
    index of the NFKC character it came from, so a match can look at the original casing."""
    nfkc = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(nfkc):
        if char.isspace():
            if out and out[-1] == " ":
                continue
            folded = " "
        else:
            folded = char.casefold()
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


class MentionMatcher:
    """Maps every normalized name to its entity ids; `find(text)` returns the ids mentioned."""

    def __init__(self, names: Mapping[str, Iterable[str]], *, min_length: int = 3) -> None:
        self._automaton = ahocorasick.Automaton()
        count = 0
        for name, entity_ids in names.items():
            key = normalize_name(name)
            if len(key) < min_length:  # "A", "It": too ambiguous to link on
                continue
            existing = self._automaton.get(key, (key, frozenset()))
            self._automaton.add_word(key, (key, existing[1] | frozenset(entity_ids)))
            count += 1
        self.size = count
        if count:
            self._automaton.make_automaton()

    def find(self, text: str) -> set[str]:
        if not self.size:
            return set()
        folded, origin = fold_with_offsets(text)  # the folding the names went through
        nfkc = unicodedata.normalize("NFKC", text)
        found: set[str] = set()
        for end, (key, entity_ids) in self._automaton.iter(folded):
            start = end - len(key) + 1
            before = folded[start - 1] if start > 0 else " "
            after = folded[end + 1] if end + 1 < len(folded) else " "
            if before.isalnum() or after.isalnum():
                continue
            if " " not in key and nfkc[origin[start]].islower():
                continue  # a one-word name in lower case is the common word, not the page
            found |= entity_ids
        return found
