"""LLM fact extraction: a chunk of text -> typed (subject, predicate, object) facts.

Used by ingestion when an endpoint is configured (`KAP_EXTRACTOR_URL`, `KAP_EXTRACTOR_MODEL`).
The request asks an OpenAI-compatible server for JSON that follows `FACTS_SCHEMA` (structured
outputs: vLLM enforces the schema with guided decoding); the reply is validated again here,
because not every server enforces it. Replies are cached on disk by a hash of the model, the
prompt version and the chunk's text, so re-ingesting a corpus costs no model calls and gives
the same facts; a reply that fails validation is not cached, and that chunk gets no facts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from kap.platform.errors import LLMError
from kap.platform.llm import ChatClient

log = logging.getLogger(__name__)

PROMPT_VERSION = "facts-v1"  # bump when the prompt or schema changes: old cache entries go stale
MAX_FACTS = 32


class ExtractedFact(BaseModel):
    subject: str = Field(min_length=1, max_length=200)
    predicate: str = Field(min_length=1, max_length=80)
    object: str = Field(min_length=1, max_length=200)


class ExtractedFacts(BaseModel):
    facts: list[ExtractedFact] = Field(default_factory=list, max_length=MAX_FACTS)


FACTS_SCHEMA: dict[str, Any] = ExtractedFacts.model_json_schema()
SYSTEM_PROMPT = (
    "You extract facts from encyclopedic text for a knowledge graph. Return JSON only: "
    '{"facts": [{"subject", "predicate", "object"}]}. Subject and object are named entities '
    "written as in the text; the predicate is a short lowercase relation such as "
    '"born_in", "located_in", "member_of", "directed_by". Only facts the text states.'
)


class Extractor(Protocol):
    def extract(self, text: str, *, title: str) -> list[ExtractedFact]: ...


def normalize_predicate(predicate: str) -> str:
    """'Was Born In' -> 'was_born_in': one spelling per relation type in the graph."""
    return re.sub(r"[^0-9a-z]+", "_", predicate.lower()).strip("_")[:80] or "related_to"


class LLMExtractor:
    """Schema-typed extraction through a `ChatClient`, cached by content hash under `cache_dir`."""

    def __init__(self, client: ChatClient, cache_dir: Path) -> None:
        self.client, self.cache_dir = client, cache_dir
        self.calls = 0  # model requests made (cache misses), for progress and tests
        self.failures = 0  # replies that were unusable

    def cache_key(self, text: str, title: str) -> str:
        payload = json.dumps([self.client.config.model, PROMPT_VERSION, title, text])
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def extract(self, text: str, *, title: str) -> list[ExtractedFact]:
        key = self.cache_key(text, title)
        path = self._path(key)
        if path.exists():
            return ExtractedFacts.model_validate_json(path.read_text()).facts
        self.calls += 1
        try:
            facts = self._ask(text, title)
        except (LLMError, ValidationError, ValueError) as exc:
            self.failures += 1
            log.warning("fact extraction failed for a chunk of %r: %s", title, exc)
            return []
        _write_atomic(path, facts.model_dump_json())
        return facts.facts

    def _ask(self, text: str, title: str) -> ExtractedFacts:
        reply = self.client.chat(
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Page: {title}\n\n{text}"},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "facts", "schema": FACTS_SCHEMA, "strict": True},
            },
        )
        content = reply.message.get("content")
        if not isinstance(content, str):
            raise LLMError("extractor reply has no text content")
        return ExtractedFacts.model_validate_json(_strip_fences(content))


def _strip_fences(content: str) -> str:
    # Servers without schema enforcement often wrap JSON in a ```json fence.
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", content, flags=re.DOTALL)
    return match.group(1) if match else content


def _write_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
    os.replace(tmp, path)  # a killed run leaves no half-written entry
