"""Small, deterministic tool-using conversations from the MuSiQue corpus, for demos and tests.

    uv run python -m kap.training.demo_data OUT.jsonl [N] [SEED]

Real curated datasets come from the trajectory store; these stand in for them wherever a
training run needs conversations without a database. Each one is an OpenAI-style chat (string
`arguments`, `tool_call_id`s) over real Wikipedia paragraphs, with a `domain` label:

- "search": the user asks about one or two articles; the assistant calls `search` once per
  article, reads the paragraph the tool returns and answers with its opening sentence(s).
- "code": the user asks how many words the opening sentence of an article has; the assistant
  searches, then calls `python` to count, and answers with the count (computed here, so true).

The same (n, seed) always gives the same conversations, byte for byte.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from kap.training.chat import Conversation, Message
from kap.training.errors import TrainingError

SYSTEM_PROMPT = "You are a research agent. Use the tools to find evidence before answering."
DOMAINS = ("search", "code")
MAX_PARAGRAPH_CHARS = 240  # keeps conversations under ~800 tokens (tiny configs)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the evidence index.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python; returns stdout.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    },
]

_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z])")
# A period after these (or after an initial, "J. R.") ends a word, not a sentence.
_ABBREVIATIONS = frozenset(
    {
        "st",
        "mt",
        "mr",
        "mrs",
        "ms",
        "dr",
        "jr",
        "sr",
        "prof",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "rev",
        "fr",
        "ft",
        "inc",
        "ltd",
        "co",
        "corp",
        "no",
        "vs",
        "etc",
    }
)


def _corpus(path: Path | None) -> list[dict[str, str]]:
    if path is None:
        from kap.training.tokenizer import shared_data_dir

        path = shared_data_dir() / "musique" / "corpus.json"
    if not path.is_file():
        raise TrainingError(f"MuSiQue corpus {path} does not exist")
    records = json.loads(path.read_text(encoding="utf-8"))
    return [r for r in records if r.get("title") and len(r.get("text", "")) > 40]


def first_sentence(text: str) -> str:
    """The text up to its first sentence end followed by a capital letter (or all of it)."""
    text = text.strip()
    for end in _SENTENCE_END.finditer(text):
        words = text[: end.start()].split()
        word = words[-1].lower() if words else ""
        if text[end.start()] == "." and (word in _ABBREVIATIONS or len(word) == 1):
            continue
        return text[: end.start() + 1]
    return text


def _clip(text: str) -> str:
    if len(text) <= MAX_PARAGRAPH_CHARS:
        return text
    return text[:MAX_PARAGRAPH_CHARS].rsplit(" ", 1)[0] + " ..."


# ---- messages ----


def _call(call_id: str, name: str, arguments: dict[str, str]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def _search_turn(n: int, record: dict[str, str]) -> list[Message]:
    call_id = f"call_{n}"
    result = f"[{record['title']}] {_clip(record['text'])}"
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call(call_id, "search", {"query": record["title"]})],
        },
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def _search_conversation(records: list[dict[str, str]]) -> list[Message]:
    titles = " and ".join(f'"{r["title"]}"' for r in records)
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"What do the articles on {titles} say?"},
    ]
    for n, record in enumerate(records):
        messages += _search_turn(n, record)
    answer = " ".join(_clip(first_sentence(r["text"])) for r in records)
    return [*messages, {"role": "assistant", "content": answer}]


def _code_conversation(record: dict[str, str]) -> list[Message]:
    sentence = _clip(first_sentence(record["text"]))
    count = len(sentence.split())
    code = f"print(len({json.dumps(sentence)}.split()))"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f'How many words has the first sentence of the article "{record["title"]}"?',
        },
        *_search_turn(0, record),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call("call_1", "python", {"code": code})],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": str(count)},
        {"role": "assistant", "content": f"It has {count} words."},
    ]


# ---- datasets ----


def demo_conversations(n: int, seed: int = 0, *, corpus: Path | None = None) -> list[Conversation]:
    """`n` conversations, two thirds "search" (one or two articles), one third "code"."""
    records = _corpus(corpus)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < 2 / 3:
            picked = rng.sample(records, k=rng.choice((1, 2)))
            messages, domain = _search_conversation(picked), "search"
        else:
            messages, domain = _code_conversation(rng.choice(records)), "code"
        out.append(
            Conversation(messages=messages, tools=TOOLS, domain=domain, id=f"demo-{seed}-{i}")
        )
    return out


def write_demo_conversations(
    path: str | Path, n: int, seed: int = 0, *, corpus: Path | None = None
) -> Path:
    """Write `demo_conversations(n, seed)` as JSONL (`load_conversations_jsonl` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for conv in demo_conversations(n, seed, corpus=corpus):
            record = {"id": conv.id, "domain": conv.domain, "tools": conv.tools}
            out.write(json.dumps({**record, "messages": conv.messages}) + "\n")
    return path


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__.splitlines()[2].strip())
    count = int(args[1]) if len(args) > 1 else 200
    print(write_demo_conversations(args[0], count, int(args[2]) if len(args) > 2 else 0))
