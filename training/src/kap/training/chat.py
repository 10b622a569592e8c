r"""The chat format with tool calls, and conversations rendered to token ids with exact loss masks.

Wire format (Qwen3's, without its thinking-history handling):

    <|im_start|>system\n{system}\n\n# Tools ... <tools>\n{tool json}\n</tools> ...<|im_end|>\n
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}\n<tool_call>\n{"name": ..}\n</tool_call><|im_end|>\n
    <|im_start|>user\n<tool_response>\n{result}\n</tool_response>\n<tool_response>...<|im_end|>\n

Consecutive tool results share one user turn, as in Qwen3. Tool-call arguments given as a dict are
written with `tojson`; given as a JSON string (OpenAI style) they are written verbatim, as Qwen3's
own template does (they are checked to be a JSON object). Message content is written verbatim:
`<think>` blocks are neither added nor stripped.

Loss mask: the template wraps each assistant body — content, tool calls and the closing
`<|im_end|>` — in `{% generation %}`, and `apply_chat_template(return_assistant_tokens_mask=True)`
maps those character spans to tokens through the fast tokenizer's offsets. Labels are the ids on
those tokens and -100 elsewhere: system, user and tool turns, every `<|im_start|>role\n` header,
and the `\n` after `<|im_end|>` (it is not generated: inference stops at `<|im_end|>`, which is
trained, as in TRL's `assistant_only_loss`). Special tokens never merge with text, so both span
ends fall on token boundaries; the one inexact case is an assistant body that starts with
whitespace the BPE merges into the header's `\n` — that token is labelled (it holds body text).

Training always renders with `CHAT_TEMPLATE` (not a checkpoint's own template) so the masks are
the same for tiny and real models; Qwen3 tokenizers hold all the special tokens it uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from transformers import BatchEncoding, PreTrainedTokenizerBase

from kap.training.errors import ConversationError

IGNORE_INDEX = -100
ROLES = frozenset({"system", "user", "assistant", "tool"})

CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and ' }}
    {{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {{- content }}
            {%- for tool_call in message.tool_calls or [] %}
                {%- if content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {%- set call = tool_call.function if tool_call.function else tool_call %}
                {{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
                {%- if call.arguments is string %}
                    {{- call.arguments }}
                {%- else %}
                    {{- call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

Message = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """One training conversation as a dataset export writes it (one JSONL line)."""

    messages: list[Message]  # OpenAI-style chat messages
    tools: list[dict[str, Any]] | None = None  # OpenAI function-calling schemas shown to the model
    domain: str | None = None  # routes the sample to its teacher in multi-teacher distillation
    id: str | int | None = None  # the trajectory or dataset item it came from


@dataclass(frozen=True)
class RenderedSample:
    """Token ids of one conversation and its labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # cut from the right at max_length
    domain: str | None = None  # the conversation's domain label, carried for routing

    def __len__(self) -> int:
        return len(self.input_ids)


# ---- validation ----


def _fail(index: int, role: object, what: str) -> ConversationError:
    return ConversationError(f"message {index} ({role}): {what}")


def _check_tool_call(index: int, n: int, tool_call: object) -> None:
    where = f"tool_calls[{n}]"
    if not isinstance(tool_call, Mapping):
        raise _fail(index, "assistant", f"{where} is not an object")
    call = tool_call.get("function", tool_call)
    if not isinstance(call, Mapping):
        raise _fail(index, "assistant", f"{where}.function is not an object")
    if not isinstance(call.get("name"), str) or not call["name"]:
        raise _fail(index, "assistant", f"{where} has no function name")
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise _fail(index, "assistant", f"{where} arguments are not valid JSON: {exc}") from exc
    if not isinstance(arguments, Mapping):
        raise _fail(index, "assistant", f"{where} arguments are not a JSON object")


def _check_message(index: int, message: object, previous: Message | None) -> None:
    if not isinstance(message, Mapping):
        raise ConversationError(f"message {index}: not an object")
    role = message.get("role")
    if role not in ROLES:
        raise _fail(index, role, f"unknown role {role!r}, expected one of {sorted(ROLES)}")
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if role == "assistant":
        if content is None and not tool_calls:
            raise _fail(index, role, "missing content and no tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise _fail(index, role, "tool_calls is not a list")
        for n, tool_call in enumerate(tool_calls or []):
            _check_tool_call(index, n, tool_call)
    elif tool_calls:
        raise _fail(index, role, "only assistant messages may carry tool_calls")
    if content is not None and not isinstance(content, str):
        raise _fail(index, role, f"content must be a string, got {type(content).__name__}")
    if role != "assistant" and content is None:
        raise _fail(index, role, "missing content")
    if role == "tool":
        after_call = previous is not None and (
            previous.get("role") == "tool"
            or (previous.get("role") == "assistant" and previous.get("tool_calls"))
        )
        if not after_call:
            raise _fail(
                index, role, "a tool result must follow an assistant message with tool_calls"
            )


def validate_messages(messages: object, tools: object = None) -> None:
    """Raise ConversationError naming the message index and the problem; None when renderable."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("messages must be a non-empty list")
    previous: Message | None = None
    for index, message in enumerate(messages):
        _check_message(index, message, previous)
        previous = message
    if tools is not None:
        if not isinstance(tools, list):
            raise ConversationError("tools must be a list of function schemas")
        for n, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise ConversationError(f"tool {n}: not an object")


# ---- rendering ----


def render_text(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    chat_template: str = CHAT_TEMPLATE,
) -> str:
    """The conversation as the string the model reads (prompting and debugging)."""
    validate_messages(list(messages), None if tools is None else list(tools))
    text = tokenizer.apply_chat_template(
        list(messages),
        tools=None if tools is None else list(tools),
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    assert isinstance(text, str)
    return text


def render_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    max_length: int | None = None,
    chat_template: str = CHAT_TEMPLATE,
    domain: str | None = None,
) -> RenderedSample:
    """Token ids and labels of one conversation; loss only on assistant bodies and <|im_end|>.

    Longer than `max_length`: cut from the right, `truncated=True`.
    """
    validate_messages(list(messages), None if tools is None else list(tools))
    encoded = tokenizer.apply_chat_template(
        list(messages),
        tools=None if tools is None else list(tools),
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert isinstance(encoded, BatchEncoding)  # tokenize=True, return_dict=True
    input_ids: list[int] = list(encoded["input_ids"])
    mask: list[int] = list(encoded["assistant_masks"])
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(input_ids, mask, strict=True)]
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return RenderedSample(input_ids, labels, truncated=truncated, domain=domain)


def render_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    *,
    max_length: int | None = None,
) -> list[RenderedSample]:
    """`render_conversation` over a dataset; errors name the conversation's position and id."""
    samples = []
    for n, conv in enumerate(conversations):
        try:
            sample = render_conversation(
                tokenizer,
                conv.messages,
                tools=conv.tools,
                max_length=max_length,
                domain=conv.domain,
            )
        except ConversationError as exc:
            raise ConversationError(f"conversation {n} (id={conv.id!r}): {exc}") from exc
        samples.append(sample)
    return samples


# ---- files ----


def _conversation_from_record(record: object) -> Conversation:
    if not isinstance(record, Mapping):
        raise ConversationError("not a JSON object")
    messages, tools = record.get("messages"), record.get("tools")
    validate_messages(messages, tools)
    domain = record.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise ConversationError(f"domain must be a string, got {type(domain).__name__}")
    conv_id = record.get("id")
    if conv_id is not None and not isinstance(conv_id, str | int):
        raise ConversationError(f"id must be a string or an integer, got {type(conv_id).__name__}")
    # validate_messages has checked the shapes the casts state
    return Conversation(
        messages=cast(list[Message], messages),
        tools=cast(list[dict[str, Any]] | None, tools),
        domain=domain,
        id=conv_id,
    )


def load_conversations_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from a JSONL file of `{"messages", "tools"?, "domain"?, "id"?}` lines.

    Blank lines are skipped; a malformed line raises ConversationError naming file and line.
    """
    path = Path(path)
    conversations = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                conversations.append(_conversation_from_record(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConversationError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
            except ConversationError as exc:
                raise ConversationError(f"{path}:{lineno}: {exc}") from exc
    return conversations
