"""The verifier: judges one solved task into named reward components.

    verdict = verify(gold, answer="Paris", answered=True, read_chunk_ids={"chunk:1"})
    verdict.components  # {"exact_match": 1.0, "f1": 1.0, ..., "format": 1.0}

Components, each in [0, 1]:
- `exact_match`, `f1`: SQuAD-style normalization (lower case, no punctuation, no articles
  a/an/the, single spaces), then exact match and token F1, the best over answer and aliases;
- `numeric`: 1 when the first number in the prediction is within `rel_tol` of the first number
  in a gold answer (both must hold a number: "35 stores" matches "35" and "35.2", not "36");
- `judge`: an LLM judge's yes/no, only when a judge is configured (`ChatJudge`);
- `correct`: 1 when exact match, numeric match, or the judge says so;
- `evidence_share`: the mean over hops of the share of each hop's evidence chunks read;
- `evidence_covered`: the share of hops with at least one evidence chunk read (any one chunk
  of a hop supports it), and `all_hops_supported`: 1 when every hop is covered;
- `format`: 1 when the solver ended through the `answer` tool with a non-empty answer.

`reward` is the weighted sum of `correct`, `evidence_covered` and `format` (`RewardWeights`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kap.platform.errors import LLMError
from kap.platform.llm import ChatClient

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, drop punctuation and articles, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(g) for g in golds))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, golds: Sequence[str]) -> float:
    return max((token_f1(prediction, g) for g in golds), default=0.0)


def first_number(text: str) -> float | None:
    """The first number written in digits ("1,234.5" -> 1234.5), or None."""
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group()) if match else None


def numeric_match(prediction: str, golds: Sequence[str], *, rel_tol: float = 0.01) -> float:
    pred = first_number(prediction)
    if pred is None:
        return 0.0
    for gold in golds:
        ref = first_number(gold)
        if ref is not None and abs(pred - ref) <= rel_tol * max(abs(ref), 1e-9):
            return 1.0
    return 0.0


class Judge(Protocol):
    """Says whether a prediction answers the question as the gold does; None: cannot tell."""

    def __call__(self, question: str, prediction: str, golds: Sequence[str]) -> bool | None: ...


JUDGE_PROMPT = """Question: {question}
Reference answers: {golds}
Predicted answer: {prediction}
Does the predicted answer mean the same as a reference answer? Reply with one word: yes or no."""


class ChatJudge:
    """An LLM judge over an OpenAI-compatible endpoint; an unusable reply is no verdict."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def __call__(self, question: str, prediction: str, golds: Sequence[str]) -> bool | None:
        prompt = JUDGE_PROMPT.format(question=question, golds=" | ".join(golds),
                                     prediction=prediction)  # fmt: skip
        try:
            reply = self.client.chat([{"role": "user", "content": prompt}], max_tokens=4)
        except LLMError:
            return None
        words = str(reply.message.get("content") or "").strip().lower().split()
        if not words:
            return None
        first = words[0].strip(string.punctuation)
        return True if first == "yes" else False if first == "no" else None


@dataclass(frozen=True)
class Gold:
    """What a task's answer must be, and the evidence chunk ids that support each hop."""

    question: str
    answer: str
    aliases: tuple[str, ...] = ()
    hops: tuple[frozenset[str], ...] = ()

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer, *self.aliases)


@dataclass(frozen=True)
class RewardWeights:
    correct: float = 0.8  # the answer is right (exact, numeric or judged)
    evidence: float = 0.1  # share of hops whose evidence the solver read
    format: float = 0.1  # ended through the answer tool with a non-empty answer


@dataclass(frozen=True)
class Verdict:
    components: dict[str, float]
    reward: float
    correct: bool
    details: dict[str, str] = field(default_factory=dict)


def evidence_components(hops: Sequence[Collection[str]], read: Collection[str]) -> dict[str, float]:
    """Share of each hop's chunks read (mean), hops covered by a read chunk, all covered."""
    hops = [h for h in hops if h]
    if not hops:
        return {"evidence_share": 0.0, "evidence_covered": 0.0, "all_hops_supported": 0.0}
    shares = [sum(c in read for c in hop) / len(hop) for hop in hops]
    covered = [s > 0 for s in shares]
    return {
        "evidence_share": sum(shares) / len(shares),
        "evidence_covered": sum(covered) / len(covered),
        "all_hops_supported": float(all(covered)),
    }


def verify(
    gold: Gold,
    answer: str | None,
    *,
    answered: bool,
    read_chunk_ids: Collection[str],
    judge: Judge | None = None,
    weights: RewardWeights = RewardWeights(),
) -> Verdict:
    """Judge one answer; `answered` says whether it came through the `answer` tool."""
    prediction = (answer or "").strip()
    components = {
        "exact_match": exact_match(prediction, gold.answers) if prediction else 0.0,
        "f1": best_f1(prediction, gold.answers) if prediction else 0.0,
        "numeric": numeric_match(prediction, gold.answers) if prediction else 0.0,
    }
    details: dict[str, str] = {}
    if judge is not None and prediction:
        said = judge(gold.question, prediction, gold.answers)
        details["judge"] = "no verdict" if said is None else str(said).lower()
        components["judge"] = float(bool(said))
    correct = bool(components["exact_match"] or components["numeric"] or components.get("judge"))
    components["correct"] = float(correct)
    components |= evidence_components(gold.hops, read_chunk_ids)
    components["format"] = float(answered and bool(prediction))
    reward = (weights.correct * components["correct"]
              + weights.evidence * components["evidence_covered"]
              + weights.format * components["format"])  # fmt: skip
    return Verdict(components, reward, correct, details)
