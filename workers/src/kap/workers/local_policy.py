"""The in-process transformers backend: a small local checkpoint behind the `Policy` interface.

    policy = TransformersPolicy("/models/qwen3-0.6b", max_new_tokens=512)
    reply = policy.next_message(messages, tools)      # PolicyReply(message, usage)
    kap eval qa QUESTIONS.json --domain D --solver local --model /models/qwen3-0.6b

Loading: `from_pretrained(path, local_files_only=True)` for the model and its tokenizer; it
never downloads. A missing directory, one without `config.json` or a tokenizer without a chat
template is a `ConfigError` naming the path; a checkpoint transformers cannot load is an
`LLMError`. torch and transformers are imported lazily (the `local` extra of kap-workers), so
the rest of kap.workers runs without them.

Prompt: the OpenAI messages and tool schemas rendered by the checkpoint's chat template (or the
`chat_template` given) with `add_generation_prompt=True`. OpenAI tool calls carry `arguments`
as a JSON string; they are handed to the template as the parsed object, the form Hugging Face
documents for templates (Qwen3's writes either form; Llama- and Mistral-style ones `tojson` it,
which would double-encode a string). Arguments that are not a JSON object stay the string.

Generation: one sequence, KV cache, until an end-of-sequence token or `max_new_tokens` (capped
by the model's window). Temperature 0 is greedy (deterministic); above 0 it samples from
softmax(logits / temperature) with the policy's own `torch.Generator` seeded once at `seed`,
so a run is reproducible without touching torch's global RNG. No top-p / top-k and no
repetition penalty: the checkpoint's generation_config sampling defaults are not applied.

Reply: the decoded tokens up to the end-of-sequence token. Every well-formed Qwen/Hermes-style
block `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` becomes an OpenAI tool call
(ids `call_<n>` numbered from 1 in the reply, arguments as JSON text); the rest, trimmed, is
the content. A malformed block (not JSON, no name, arguments not an object, unclosed) stays in
the content verbatim, so the solver sees a turn without that call and answers it.

Usage: prompt tokens = the rendered prompt's token count, completion tokens = the tokens
generated (the end-of-sequence token included), one request per reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kap.platform.errors import ConfigError, LLMError
from kap.platform.llm import Usage
from kap.workers.policy import Message, PolicyReply, tool_call

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split a reply into its content and its OpenAI tool calls (see the module docstring)."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for match in _BLOCK.finditer(text):
        parsed = _parse_block(match.group(1))
        if parsed is None:
            continue  # malformed: the block stays in the content
        kept.append(text[last : match.start()])
        last = match.end()
        name, arguments = parsed
        calls.append(tool_call(f"call_{len(calls) + 1}", name, arguments))
    kept.append(text[last:])
    return "".join(kept).strip(), calls


def _parse_block(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of one `<tool_call>` body, or None when it is malformed."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return call["name"], json.dumps(arguments, ensure_ascii=False)


def template_messages(messages: Sequence[Message]) -> list[Message]:
    """Copies of `messages` in the form chat templates expect: string content, tool-call
    arguments as objects (when they parse to one)."""
    out: list[Message] = []
    for message in messages:
        copy = {**message, "content": message.get("content") or ""}
        if message.get("tool_calls"):
            copy["tool_calls"] = [_template_call(c) for c in message["tool_calls"]]
        out.append(copy)
    return out


def _template_call(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            function["arguments"] = parsed
    return {**call, "function": function}


def check_checkpoint(path: Path) -> None:
    """ConfigError naming `path` unless it is a directory holding a `config.json`."""
    if not path.exists():
        raise ConfigError(f"local model {path}: no such directory")
    if not path.is_dir():
        raise ConfigError(f"local model {path}: not a directory (expected a checkpoint dir)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"local model {path}: no config.json (not a transformers checkpoint)")


class TransformersPolicy:
    """`Policy` over a local causal LM run in this process; raises `LLMError` when it fails."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        device: str = "cpu",
        seed: int = 0,
        chat_template: str | None = None,
    ) -> None:
        if max_new_tokens < 1 or temperature < 0:
            raise ConfigError("max_new_tokens must be >= 1 and temperature >= 0")
        self.path = Path(model_path).expanduser()
        check_checkpoint(self.path)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ConfigError(
                f"local models need torch and transformers: install kap-workers[local] ({exc})"
            ) from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise LLMError(f"local model {self.path}: cannot load: {exc}") from exc
        self.model = model.to(device).eval()
        self.chat_template = chat_template or self.tokenizer.chat_template
        if not self.chat_template:
            raise ConfigError(f"local model {self.path}: the tokenizer has no chat template")
        self.max_new_tokens, self.temperature, self.device = max_new_tokens, temperature, device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.window: int | None = getattr(self.model.config, "max_position_embeddings", None)

    def render(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> str:
        """The prompt text the model reads, ending with the assistant generation header."""
        text = self.tokenizer.apply_chat_template(
            template_messages(messages), tools=list(tools) or None,
            chat_template=self.chat_template, add_generation_prompt=True, tokenize=False,
        )  # fmt: skip
        if not isinstance(text, str):
            raise LLMError(f"local model {self.path}: the chat template did not render text")
        return text

    def encode(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of the rendered prompt (the template writes the special tokens itself)."""
        ids = self.tokenizer(self.render(messages, tools), add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def next_message(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> PolicyReply:
        try:
            prompt = self.encode(messages, tools)
        except LLMError:
            raise
        except Exception as exc:  # a template error on this conversation fails this reply only
            raise LLMError(f"local model {self.path}: cannot render the prompt: {exc}") from exc
        budget = self.max_new_tokens
        if self.window is not None:
            budget = min(budget, self.window - len(prompt))
            if budget < 1:
                raise LLMError(f"local model {self.path}: prompt of {len(prompt)} tokens fills "
                               f"its {self.window}-token window")  # fmt: skip
        generated = self.generate(prompt, budget)
        end = next((i for i, tok in enumerate(generated) if tok in self.eos_ids), len(generated))
        text = self.tokenizer.decode(generated[:end], skip_special_tokens=False)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        content, calls = parse_tool_calls(text)
        message: Message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return PolicyReply(message, Usage(len(prompt), len(generated), 1))

    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """New token ids after `prompt`: greedy or seeded sampling, stopping after an EOS."""
        import torch

        generated: list[int] = []
        with torch.inference_mode():
            ids = torch.tensor([prompt], device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            for _ in range(max_new_tokens):
                token = self._pick(out.logits[0, -1].float())
                generated.append(token)
                if token in self.eos_ids:
                    break
                ids = torch.tensor([[token]], device=self.device)
                out = self.model(input_ids=ids, past_key_values=out.past_key_values, use_cache=True)
        return generated

    def _pick(self, logits_V: Any) -> int:
        import torch

        if self.temperature == 0:
            return int(torch.argmax(logits_V).item())
        probs_V = torch.softmax(logits_V / self.temperature, dim=-1)
        return int(torch.multinomial(probs_V, 1, generator=self.generator).item())


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids: the generation config's (one or a list) and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
