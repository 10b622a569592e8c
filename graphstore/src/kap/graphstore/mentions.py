"""Finds known entity names in chunk text with one Aho-Corasick automaton over all names.

One pass over a chunk finds every title and alias it mentions, whatever the number of names
(a regex per title would be O(titles x text)). Matching is on normalized text (NFKC,
casefolded) and only at word boundaries, so "Tito" does not match inside "Titov".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ahocorasick

from kap.graphstore.text import normalize_name


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
        folded = normalize_name(text)  # the same folding as the names it is matched against
        found: set[str] = set()
        for end, (key, entity_ids) in self._automaton.iter(folded):
            start = end - len(key) + 1
            before = folded[start - 1] if start > 0 else " "
            after = folded[end + 1] if end + 1 < len(folded) else " "
            if not before.isalnum() and not after.isalnum():
                found |= entity_ids
        return found
