"""Tokenizers without downloads: a byte-level BPE trained locally on the project's corpora.

The trained tokenizer speaks the Qwen3 chat format of `kap.training.chat`: Qwen2/3's
pre-tokenizer regex (single digits, letters with one leading non-letter) over byte-level BPE, so
every string round-trips exactly, and the special tokens of the chat format as single ids:

    id 0 <|endoftext|> (pad)   1 <|im_start|>   2 <|im_end|> (eos)
    3..8 <tool_call> </tool_call> <tool_response> </tool_response> <think> </think>

The tool and think tags are added tokens that are *not* special (as in Qwen3): decoding with
`skip_special_tokens=True` keeps them, so tool calls can be parsed from generations.
Save with `tokenizer.save_pretrained(dir)`, read back with `load_tokenizer(dir)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from kap.platform.paths import repo_root
from kap.training.chat import CHAT_TEMPLATE
from kap.training.errors import CheckpointError, TrainingError

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CONTROL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
TAG_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
SPECIAL_TOKENS = CONTROL_TOKENS + TAG_TOKENS
# Qwen2/Qwen3's split regex: digits one by one, newlines kept apart from words.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MODEL_MAX_LENGTH = 131072  # the SFT default max length (DESIGN §7)


# ---- corpora ----


def shared_data_dir() -> Path:
    """`<repo>/../shared/data`, where the project's real corpora live (never copied in)."""
    root = repo_root()
    if root is None:
        raise TrainingError("no source checkout: pass corpus paths explicitly")
    return root.parent / "shared" / "data"


def default_corpus_paths() -> list[Path]:
    """The corpora a tokenizer is trained on when none are given: the MuSiQue paragraphs."""
    return [shared_data_dir() / "musique" / "corpus.json"]


def _records(path: Path) -> Iterator[Any]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise TrainingError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise TrainingError(f"{path}: expected a JSON list of {{'title', 'text'}} records")
    yield from data


def _record_text(path: Path, n: int, record: Any) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise TrainingError(f"{path}: record {n} has no string 'text'")
    title = record.get("title")
    return f"{title}\n{record['text']}" if isinstance(title, str) and title else record["text"]


def corpus_texts(
    paths: Iterable[str | Path] | None = None,
    *,
    limit: int | None = None,
    with_tool_snippets: bool = True,
) -> Iterator[str]:
    """Texts of `{"title"?, "text"}` records from JSON lists / JSONL files, then tool-call snippets.

    `paths` defaults to `default_corpus_paths()`; `limit` caps the records read per file.
    """
    for raw in default_corpus_paths() if paths is None else paths:
        path = Path(raw)
        if not path.is_file():
            raise TrainingError(f"corpus file {path} does not exist")
        for n, record in enumerate(_records(path)):
            if limit is not None and n >= limit:
                break
            yield _record_text(path, n, record)
    if with_tool_snippets:
        yield from tool_call_snippets()


_SNIPPET_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {arg: {"type": kind, "description": f"The {arg}."}},
                "required": [arg],
            },
        },
    }
    for name, description, arg, kind in [
        ("search", "Search the evidence index for passages.", "query", "string"),
        ("visit", "Read a chunk or a document by id.", "chunk_id", "string"),
        ("graph", "List the neighbours of an entity in the knowledge graph.", "entity", "string"),
        ("python", "Run Python code in a sandbox and return stdout.", "code", "string"),
        ("top_k", "How many results to return.", "k", "integer"),
    ]
]
_SNIPPET_CALLS = [
    ("search", {"query": "Who founded the university in 1891?"}, '[{"chunk_id": "c-17"}]'),
    ("visit", {"chunk_id": "doc-3#2"}, "Stanford University was founded in 1885 by Leland."),
    ("graph", {"entity": "Leland Stanford"}, '{"spouse": ["Jane Stanford"], "born": 1824}'),
    ("python", {"code": "print(sum(range(10)))"}, "45"),
    ("top_k", {"k": 5}, '{"ok": true, "results": [], "error": null}'),
]


def tool_call_snippets() -> list[str]:
    """Chat-format texts with tools, tool calls and tool responses, rendered by CHAT_TEMPLATE.

    They put JSON punctuation and the tag layout into the BPE training data.
    """
    conversations: list[list[dict[str, Any]]] = []
    for name, arguments, result in _SNIPPET_CALLS:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        conversations.append(
            [
                {"role": "system", "content": "You are a careful research agent."},
                {"role": "user", "content": f"Use {name} to answer."},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": result},
                {"role": "assistant", "content": f"The {name} tool returned: {result}"},
            ]
        )
    tools = cast(list[dict[Any, Any] | Callable[..., Any]], _SNIPPET_TOOLS)
    # transformers annotates the return as str; it is (texts, generation spans)
    rendered, _ = cast(
        tuple[list[str], list[Any]],
        render_jinja_template(
            conversations=conversations, tools=tools, chat_template=CHAT_TEMPLATE
        ),
    )
    return rendered


# ---- training, loading ----


def _without_special_tokens(texts: Iterable[str]) -> Iterator[str]:
    # Special tokens are matched before BPE at encode time, so merges spent on them are wasted.
    for text in texts:
        for token in SPECIAL_TOKENS:
            text = text.replace(token, "\n")
        yield text


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` ids (specials included) with CHAT_TEMPLATE attached."""
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= floor:
        raise ValueError(f"vocab_size={vocab_size} must exceed the 256 bytes + specials ({floor})")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False: whitespace keeps its offsets, so every character maps to a token.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_without_special_tokens(texts), trainer)
    # The trainer marks every listed token special; Qwen3 keeps the tags as plain added tokens.
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return _wrap(backend)


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,  # byte-level decoding is already exact
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved with `save_pretrained` (trained here or a checkpoint's), read locally."""
    path = Path(path).expanduser()
    if not path.is_dir() or not (path / "tokenizer_config.json").is_file():
        raise CheckpointError(
            f"tokenizer path {path} is not a directory with tokenizer_config.json"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> list[int]:
    """Ids of `tokens`, each required to be a single id of the vocabulary."""
    ids = []
    for token in tokens:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise TrainingError(f"{token!r} is not a single token in this tokenizer ({encoded})")
        ids.append(encoded[0])
    return ids
