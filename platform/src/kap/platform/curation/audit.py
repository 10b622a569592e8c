"""Contamination audit: n-gram overlap between a dataset's conversations and an evaluation set.

    report = audit(records, load_eval(Path("eval.jsonl")), n=8, threshold=0.5)

An evaluation item is its question with its answer, as lower-cased word tokens; its overlap with
a dataset item is the fraction of its n-grams (word `n`-grams; an item shorter than `n` words is
one n-gram, itself) found anywhere in the dataset item's text. A dataset item is flagged when
some evaluation item overlaps it by `threshold` or more: at the defaults, half of an eval
question's 8-grams (the window of Llama 2's and GPT-3's contamination studies, which used
13-grams on far longer texts) must occur in the conversation.

A dataset item's text is what a model is trained to read or write: system, user and assistant
content and tool-call arguments. Tool observations (retrieved passages) are left out unless
asked for: evaluation questions are often written from the same corpus, and a passage that
answers a question is not the question leaking.

Cost: one pass over the dataset; each item's n-grams are looked up in an inverted index of the
evaluation n-grams, so the work is linear in the dataset's tokens.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kap.platform.errors import CurationError

_WORD = re.compile(r"\w+", re.UNICODE)
QUESTION_KEYS = ("question", "prompt", "input", "query")
ANSWER_KEYS = ("answer", "gold_answer", "target", "output")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.question} {self.answer}".strip()


def _field(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return " ".join(value)
    return ""


def load_eval(path: Path) -> list[EvalItem]:
    """Evaluation items from JSONL (one object a line) or a JSON list; each needs a question."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CurationError(f"cannot read {path}: {exc.strerror}") from None
    stripped = text.lstrip()
    entries: list[tuple[str, Any]]
    if stripped.startswith("["):
        try:
            entries = [(f"{path}[{i}]", r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise CurationError(f"{path}: invalid JSON: {exc}") from None
    else:
        entries = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise CurationError(f"{path}:{lineno}: invalid JSON: {exc}") from None
    items = []
    for where, record in entries:
        if not isinstance(record, dict):
            raise CurationError(f"{where}: not a JSON object")
        question = _field(record, QUESTION_KEYS)
        if not question:
            raise CurationError(f"{where}: no question (one of {', '.join(QUESTION_KEYS)})")
        ident = record.get("id", where)
        items.append(EvalItem(str(ident), question, _field(record, ANSWER_KEYS)))
    if not items:
        raise CurationError(f"{path}: no evaluation items")
    return items


def record_text(record: dict[str, Any], *, observations: bool = False) -> str:
    """What a model reads or writes in an export record (tool results only if asked)."""
    parts: list[str] = []
    for message in record["messages"]:
        if message.get("role") == "tool" and not observations:
            continue
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or []:
            parts.append(str(call.get("function", {}).get("arguments", "")))
    return "\n".join(parts)


@dataclass(frozen=True)
class Hit:
    position: int
    trajectory_id: str
    eval_id: str
    overlap: float  # fraction of the eval item's n-grams found in the dataset item
    example: str  # one shared n-gram, as text


@dataclass
class AuditReport:
    n: int
    threshold: float
    items: int = 0
    eval_items: int = 0
    flagged: list[Hit] = field(default_factory=list)
    max_overlap: float = 0.0
    eval_hit: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "threshold": self.threshold,
            "items": self.items,
            "eval_items": self.eval_items,
            "flagged_items": len({h.position for h in self.flagged}),
            "eval_items_leaked": len(self.eval_hit),
            "max_overlap": round(self.max_overlap, 4),
            "flagged": [h.__dict__ for h in self.flagged],
        }


def audit(
    dataset: Iterable[dict[str, Any]],
    evaluation: list[EvalItem],
    *,
    n: int = 8,
    threshold: float = 0.5,
    observations: bool = False,
) -> AuditReport:
    """Flag dataset records that share `threshold` or more of an eval item's n-grams."""
    if n < 1:
        raise CurationError(f"n must be at least 1, got {n}")
    if not 0 < threshold <= 1:
        raise CurationError(f"threshold must be in (0, 1], got {threshold}")
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    sizes = []
    for k, item in enumerate(evaluation):
        grams = ngrams(tokens(item.text), n)
        sizes.append(len(grams))
        for gram in grams:
            index[gram].append(k)
    # Eval items shorter than n are one n-gram of their own length: look those lengths up too.
    lengths = {n} | {len(gram) for gram in index}
    report = AuditReport(n=n, threshold=threshold, eval_items=len(evaluation))
    for record in _numbered(dataset):
        report.items += 1
        words = tokens(record_text(record, observations=observations))
        found: Counter[int] = Counter()
        example: dict[int, tuple[str, ...]] = {}
        for length in lengths:
            for gram in ngrams(words, length) if len(words) >= length else set():
                for k in index.get(gram, ()):
                    found[k] += 1
                    example.setdefault(k, gram)
        for k, count in found.items():
            overlap = count / sizes[k]
            report.max_overlap = max(report.max_overlap, overlap)
            if overlap >= threshold:
                report.flagged.append(
                    Hit(record["position"], record["trajectory_id"], evaluation[k].id,
                        round(overlap, 4), " ".join(example[k]))
                )  # fmt: skip
                report.eval_hit.add(evaluation[k].id)
    report.flagged.sort(key=lambda h: (-h.overlap, h.position))
    return report


def _numbered(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for position, record in enumerate(records):
        yield {"position": position, **record}
