"""Chunking by the embedding model's tokens; the content-hash ids behind idempotent ingestion."""

from __future__ import annotations

from itertools import pairwise

import pytest

from kap.graphstore.ingest import entity_id
from kap.graphstore.text import TextSpan, chunk_text, content_id, model_tokenizer, normalize_name

TEXT = " ".join(f"Sentence {i} names the Analytical Engine and Charles Babbage." for i in range(60))


def tokens(start: int, end: int) -> int:
    """Tokens of TEXT (tokenized whole, as chunking does) that lie within [start, end)."""
    offsets = model_tokenizer().encode(TEXT, add_special_tokens=False).offsets
    return sum(1 for a, b in offsets if b > a and start <= a and b <= end)


def test_chunks_are_exact_substrings_of_at_most_max_tokens() -> None:
    spans = chunk_text(TEXT, max_tokens=50, overlap=10)
    assert len(spans) > 5
    assert [s.ord for s in spans] == list(range(len(spans)))
    for span in spans:
        assert span.text == TEXT[span.start : span.end]  # evidence can be quoted verbatim
        assert span.n_tokens <= 50
        assert (
            tokens(span.start, span.end) == span.n_tokens
        )  # counted with the model's own tokenizer
    assert spans[0].start == 0 and spans[-1].end == len(TEXT.rstrip())


def test_consecutive_chunks_share_the_overlap() -> None:
    spans = chunk_text(TEXT, max_tokens=50, overlap=10)
    for a, b in pairwise(spans):
        assert b.start < a.end  # they overlap ...
        assert tokens(b.start, a.end) == 10  # ... by exactly `overlap` tokens
    no_overlap = chunk_text(TEXT, max_tokens=50, overlap=0)
    assert all(a.end <= b.start for a, b in pairwise(no_overlap))


def test_short_blank_and_tokenless_texts() -> None:
    [one] = chunk_text("Ada Lovelace.", max_tokens=200, overlap=32)
    assert (one.start, one.end, one.text) == (0, 13, "Ada Lovelace.")
    assert chunk_text("   \n ", max_tokens=200, overlap=32) == []
    [odd] = chunk_text("\u200b", max_tokens=200, overlap=32)  # no tokens, not blank: kept whole
    assert odd.text == "\u200b" and odd.n_tokens == 0


@pytest.mark.parametrize(("overlap", "max_tokens"), [(-1, 10), (10, 10), (11, 10)])
def test_overlap_must_be_smaller_than_the_window(overlap: int, max_tokens: int) -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(TEXT, max_tokens=max_tokens, overlap=overlap)


def test_chunking_and_ids_are_deterministic() -> None:
    assert chunk_text(TEXT, max_tokens=64, overlap=8) == chunk_text(TEXT, max_tokens=64, overlap=8)
    assert content_id("chunk", "doc:1", "0", "x") == content_id("chunk", "doc:1", "0", "x")
    assert content_id("chunk", "doc:1", "0", "x").startswith("chunk:")
    # Parts are separated, not concatenated: ("ab", "c") and ("a", "bc") are different ids.
    assert content_id("doc", "ab", "c") != content_id("doc", "a", "bc")


def test_entities_resolve_by_normalized_name_within_a_domain() -> None:
    assert normalize_name("  Ada\u00a0 LOVELACE\n") == "ada lovelace"
    assert normalize_name("ﬁne") == "fine"  # NFKC
    assert entity_id("d", "Ada Lovelace") == entity_id("d", " ada  lovelace ")
    assert entity_id("d", "Ada Lovelace") != entity_id("e", "Ada Lovelace")


def test_a_long_text_is_tokenized_in_segments_exactly_as_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kap.graphstore.text as text_module

    text = "\n\n".join(
        f"Paragraph {i}: \uff22abbage's «engine» (1837)\tcost £{i},000 — naïve estimate; "
        + "x" * (i % 7) * 4  # words of every length up to 24 characters
        for i in range(300)
    )
    whole = model_tokenizer().encode(text, add_special_tokens=False).offsets
    expected = [(a, b) for a, b in whole if b > a]
    for segment in (64, 333, 4096):  # cut inside a segment's second half, at whitespace
        monkeypatch.setattr(text_module, "SEGMENT_CHARS", segment)
        starts, ends = text_module.token_offsets(text, model_tokenizer())
        assert list(zip(starts, ends, strict=True)) == expected, segment
    monkeypatch.setattr(text_module, "SEGMENT_CHARS", 333)
    reference = chunk_text_whole(text, expected, max_tokens=40, overlap=8)
    assert chunk_text(text, max_tokens=40, overlap=8) == reference


def chunk_text_whole(
    text: str, offsets: list[tuple[int, int]], *, max_tokens: int, overlap: int
) -> list[TextSpan]:
    """The windows over offsets of the text encoded in one call (the reference)."""
    spans, step = [], max_tokens - overlap
    for ord_, first in enumerate(range(0, max(1, len(offsets) - overlap), step)):
        window = offsets[first : first + max_tokens]
        start, end = window[0][0], window[-1][1]
        spans.append(TextSpan(ord_, start, end, text[start:end], len(window)))
        if first + max_tokens >= len(offsets):
            break
    return spans
