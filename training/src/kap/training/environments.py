"""Multi-turn tool environments for GRPO rollouts: the protocol, reward shaping, a toy environment.

An episode (driven by `kap.training.rollout.run_episode`): `env.reset(task)` gives the opening
messages; the policy writes an assistant turn; each `<tool_call>` in it goes to `env.step(call)`
and the result comes back as a tool message; the episode ends when a step says `done` (the
`answer` tool), when the policy writes a turn without any tool call (its text is the final
answer), or at the round cap. `env.score(task, messages)` is the verifier; `shaped_reward` adds
the training-time terms of DESIGN §7 (round penalty, repetition penalty, format).

Who implements `Environment`: kap.workers provides the real tools (search, visit, graph, python)
and verifier (DESIGN §5). Dependencies flow platform ← training and platform ← graphstore ←
workers, so neither package imports the other: the protocol is structural. An implementation
needs no import from kap.training — `step` may return any object with `content`, `done` and
`is_error` attributes, `score` any object with `values`, `r_out` and `r_proc`; `ToolResult` and
`RewardComponents` below are ready-made ones. One environment object serves one episode at a
time (it may keep per-episode state between `reset` and `score`); trainers take a factory
(`Callable[[], Environment]`, e.g. the class itself) and build one per episode.

The contract of `step`: it receives only calls to tools listed by `tools()` (the rollout loop
answers unknown tools and unparsable calls itself, with an error observation), in OpenAI form
`{"id", "type": "function", "function": {"name", "arguments": "<JSON object as a string>"}}` —
the arguments are valid JSON but not checked against the schema: that is the environment's job.
A tool failure or bad arguments is an observation with `is_error=True`, never an exception: the
episode goes on and the model sees the error.

`ArithmeticEnv` is the toy environment for CPU tests and the demo: "What is 3 + 4?" with a
`calculator` and an `answer` tool, verified by exact integer match. It exists so the whole GRPO
loop runs, and measurably improves a tiny random-init model, in seconds on a CPU (see its
docstring for what such a model can learn there).
"""

from __future__ import annotations

import ast
import json
import operator
import random
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
ANSWER_TOOL = "answer"


# ---- the protocol ----


@dataclass(frozen=True)
class Task:
    """One verifiable task: what the proposer writes and the verifier checks against."""

    id: str  # stable id (the Postgres task id for self-play tasks)
    prompt: str  # the user message that opens the episode
    answer: str  # the gold answer
    aliases: tuple[str, ...] = ()  # other strings that count as the gold answer
    domain: str = "default"  # routes the task to its teacher (and to its environment)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # e.g. evidence chunk ids per hop


class ToolObservation(Protocol):
    """What `Environment.step` returns (`ToolResult` is one)."""

    @property
    def content(self) -> str: ...  # the tool message the model reads next
    @property
    def done(self) -> bool: ...  # the episode ends after this call (e.g. the answer tool)
    @property
    def is_error(self) -> bool: ...  # the call failed (bad arguments, tool error)


class Score(Protocol):
    """What `Environment.score` returns (`RewardComponents` is one)."""

    @property
    def values(self) -> Mapping[str, float]: ...  # named reward terms, summed into the reward
    @property
    def r_out(self) -> float: ...  # outcome: 1.0 when the final answer is correct, else 0.0
    @property
    def r_proc(self) -> float: ...  # process reward in [0, 1] (tool teacher's r^proc)


@runtime_checkable
class Environment(Protocol):
    """A multi-turn tool episode: tools to show, opening messages, tool execution, verifier."""

    def tools(self) -> list[dict[str, Any]]:
        """OpenAI function-calling schemas (`{"type": "function", "function": {...}}`)."""
        ...

    def reset(self, task: Task) -> list[Message]:
        """Start an episode: the opening messages (system and user), OpenAI style."""
        ...

    def step(self, tool_call: dict[str, Any]) -> ToolObservation:
        """Execute one OpenAI-style tool call of a listed tool; failures are error observations."""
        ...

    def score(self, task: Task, messages: Sequence[Message]) -> Score:
        """Verify a finished episode: named reward terms, r_out (correctness) and r_proc."""
        ...


EnvFactory = Callable[[], Environment]


@dataclass(frozen=True)
class ToolResult:
    content: str
    done: bool = False
    is_error: bool = False


@dataclass(frozen=True)
class RewardComponents:
    values: Mapping[str, float]  # e.g. {"correctness": 1.0}; every term is added to the reward
    r_out: float  # binary outcome (1 correct, 0 not): dynamic sampling and the tool teacher
    r_proc: float = 0.0  # process quality in [0, 1], e.g. share of evidence hops visited


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    """Function names of OpenAI tool schemas (flat `{"name": ...}` schemas accepted too)."""
    return [str(t.get("function", t).get("name")) for t in tools]


# ---- reward shaping ----


@dataclass(frozen=True)
class RewardConfig:
    """Training-time reward terms added to the verifier's (DESIGN §7)."""

    free_rounds: int = 4  # K: assistant turns allowed before the linear round penalty starts
    round_penalty: float = 0.05  # subtracted per turn past K: round_penalty * max(0, rounds - K)
    repeat_call_penalty: float = 0.1  # per tool call identical (name + arguments) to an earlier one
    ngram_size: int = 4  # n of the word n-grams checked for repetition in the assistant text
    ngram_penalty: float = 0.5  # times the share of the assistant's word n-grams seen before
    format_bonus: float = 0.1  # added when the final answer was given through the answer tool
    malformed_penalty: float = 0.1  # per malformed tool call (bad JSON, no name, unknown tool)
    answer_tool: str = ANSWER_TOOL  # the tool whose call is the final answer

    def __post_init__(self) -> None:
        if self.free_rounds < 0 or self.ngram_size < 1:
            raise ValueError(f"need free_rounds >= 0 and ngram_size >= 1, got {self}")


SHAPED_TERMS = ("round_penalty", "repetition_penalty", "format")


def _function(call: Mapping[str, Any]) -> Mapping[str, Any]:
    fn = call.get("function", call)
    return fn if isinstance(fn, Mapping) else {}


def _arguments(call: Mapping[str, Any]) -> Any:
    args = _function(call).get("arguments", {})
    if isinstance(args, str):
        try:
            return json.loads(args)
        except json.JSONDecodeError:
            return args
    return args


def assistant_tool_calls(messages: Sequence[Message]) -> list[Mapping[str, Any]]:
    return [c for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []]


def repeated_tool_calls(messages: Sequence[Message]) -> int:
    """Tool calls identical (name and arguments, key order ignored) to an earlier call."""
    seen: set[str] = set()
    repeats = 0
    for call in assistant_tool_calls(messages):
        key = json.dumps([_function(call).get("name"), _arguments(call)], sort_keys=True)
        repeats += key in seen
        seen.add(key)
    return repeats


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the word n-grams of `text` that already occurred earlier in it (0 if none)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def assistant_text(messages: Sequence[Message]) -> str:
    return "\n".join(
        m["content"] for m in messages if m.get("role") == "assistant" and m.get("content")
    )


def malformed_tool_calls(
    messages: Sequence[Message], known_tools: Collection[str] | None = None
) -> int:
    """Malformed calls: `<tool_call>` blocks left in assistant text + calls to unknown tools.

    The rollout loop moves every well-formed block into `tool_calls` and leaves a malformed one
    verbatim in the content, so what remains in the text did not parse.
    """
    unparsed = sum(
        (m.get("content") or "").count("<tool_call>")
        for m in messages
        if m.get("role") == "assistant"
    )
    unknown = 0
    if known_tools is not None:
        names = (_function(c).get("name") for c in assistant_tool_calls(messages))
        unknown = sum(name not in known_tools for name in names)
    return unparsed + unknown


def answered_with_tool(messages: Sequence[Message], answer_tool: str = ANSWER_TOOL) -> bool:
    return any(_function(c).get("name") == answer_tool for c in assistant_tool_calls(messages))


def shaped_reward(
    components: Score,
    rounds: int,
    messages: Sequence[Message],
    cfg: RewardConfig,
    *,
    known_tools: Collection[str] | None = None,
) -> tuple[float, dict[str, float]]:
    """(total, terms): the verifier's terms plus round, repetition and format terms, summed.

    round_penalty = -cfg.round_penalty * max(0, rounds - cfg.free_rounds)
    repetition_penalty = -(cfg.repeat_call_penalty * repeated identical tool calls
                           + cfg.ngram_penalty * repeated word-n-gram share of the assistant text)
    format = cfg.format_bonus * [final answer given via the answer tool]
             - cfg.malformed_penalty * malformed tool calls
    The verifier may not use these three names (ValueError): no term is counted twice.
    """
    terms = {name: float(value) for name, value in components.values.items()}
    clash = sorted(set(terms) & set(SHAPED_TERMS))
    if clash:
        raise ValueError(f"the verifier's terms {clash} clash with the shaped reward's")
    repetition = cfg.repeat_call_penalty * repeated_tool_calls(messages)
    repetition += cfg.ngram_penalty * repeated_ngram_fraction(
        assistant_text(messages), cfg.ngram_size
    )
    fmt = cfg.format_bonus * answered_with_tool(messages, cfg.answer_tool)
    fmt -= cfg.malformed_penalty * malformed_tool_calls(messages, known_tools)
    terms["round_penalty"] = -cfg.round_penalty * max(0, rounds - cfg.free_rounds)
    terms["repetition_penalty"] = -repetition
    terms["format"] = fmt
    return sum(terms.values()), terms


# ---- answers ----


def final_answer(messages: Sequence[Message], answer_tool: str = ANSWER_TOOL) -> str | None:
    """The `text` of the last answer-tool call; without one, the last assistant message's text."""
    for message in reversed(messages):
        if message.get("role") != "assistant":
            continue
        for call in reversed(message.get("tool_calls") or []):
            if _function(call).get("name") == answer_tool:
                args = _arguments(call)
                text = args.get("text") if isinstance(args, Mapping) else None
                return str(text) if text is not None else ""
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    return None if last is None else (last.get("content") or "")


_INT = re.compile(r"-?\d+")


def last_integer(text: str | None) -> int | None:
    """The last integer written in `text` (GSM8K-style answer extraction), None if there is none."""
    found = _INT.findall(text or "")
    return int(found[-1]) if found else None


# ---- the toy environment ----

_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


def evaluate_arithmetic(expression: str) -> int:
    """Integer +, -, * and parentheses only (parsed with `ast`, never `eval`); ValueError else."""
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported element {type(node).__name__}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from exc
    return ev(tree.body)


def _schema(name: str, description: str, arg: str) -> dict[str, Any]:
    properties = {arg: {"type": "string", "description": f"The {arg}."}}
    parameters = {"type": "object", "properties": properties, "required": [arg]}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


class ArithmeticEnv:
    """Toy verifiable tool environment: integer arithmetic questions, exact-match verifier.

    Tools: `calculator(expression)` (integer + - * and parentheses) and `answer(text)`, which
    ends the episode. The final answer is the answer tool's text or, without an answer call,
    the last assistant text; it is correct when its last integer equals the gold answer
    (`last_integer`). r_proc = 1 when a calculator call returned the gold value (the process
    reached the answer), else 0.

    What it is for: CPU tests and the demo of the GRPO loop. A tiny random-init model cannot
    write a JSON tool call in a few dozen steps, so on this task it learns what its reward can
    reach: write digits and stop, and favour the most frequent answers of the task
    distribution (with `make_arithmetic_tasks(max_operand=2)` the sums 0..4 have
    frequencies 1, 2, 3, 2, 1 in 9). The reward still comes only from this verifier.
    """

    def __init__(self, *, with_calculator: bool = True, system_prompt: str | None = None) -> None:
        self.with_calculator = with_calculator
        self.system_prompt = system_prompt or (
            "Solve the arithmetic problem. Call answer with the result as a number."
        )

    def tools(self) -> list[dict[str, Any]]:
        answer = _schema(ANSWER_TOOL, "Give the final answer; ends the episode.", "text")
        if not self.with_calculator:
            return [answer]
        return [_schema("calculator", "Evaluate an integer expression.", "expression"), answer]

    def reset(self, task: Task) -> list[Message]:
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": task.prompt},
        ]

    def step(self, tool_call: dict[str, Any]) -> ToolResult:
        name = _function(tool_call).get("name")
        args = _arguments(tool_call)
        if not isinstance(args, Mapping):
            return ToolResult("Error: arguments must be a JSON object.", is_error=True)
        if name == ANSWER_TOOL:
            if not isinstance(args.get("text"), str | int | float):
                return ToolResult("Error: answer needs a 'text' argument.", is_error=True)
            return ToolResult("Answer recorded.", done=True)
        if name == "calculator" and self.with_calculator:
            expression = args.get("expression")
            if not isinstance(expression, str):
                return ToolResult("Error: calculator needs an 'expression' string.", is_error=True)
            try:
                return ToolResult(str(evaluate_arithmetic(expression)))
            except (ValueError, RecursionError) as exc:
                return ToolResult(f"Error: {exc}", is_error=True)
        return ToolResult(f"Error: unknown tool {name!r}.", is_error=True)

    def score(self, task: Task, messages: Sequence[Message]) -> RewardComponents:
        golds = {last_integer(a) for a in (task.answer, *task.aliases)} - {None}
        correct = float(last_integer(final_answer(messages)) in golds)
        return RewardComponents(
            {"correctness": correct}, r_out=correct, r_proc=self._proc(golds, messages)
        )

    def _proc(self, golds: set[int | None], messages: Sequence[Message]) -> float:
        for call in assistant_tool_calls(messages):
            args = _arguments(call)
            if _function(call).get("name") == "calculator" and isinstance(args, Mapping):
                try:
                    if evaluate_arithmetic(str(args.get("expression"))) in golds:
                        return 1.0
                except (ValueError, RecursionError):
                    continue
        return 0.0


def make_arithmetic_tasks(
    n: int, *, seed: int, max_operand: int = 9, ops: Sequence[str] = ("+",)
) -> list[Task]:
    """`n` tasks "What is a <op> b?" with operands in [0, max_operand], reproducible from `seed`."""
    bad = sorted(set(ops) - {"+", "-", "*"})
    if bad:
        raise ValueError(f"unsupported operators {bad}; use +, - or *")
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(ops)
        expression = f"{a} {op} {b}"
        gold = evaluate_arithmetic(expression)
        tasks.append(
            Task(
                id=f"arith-{seed}-{i}",
                prompt=f"What is {expression}?",
                answer=str(gold),
                domain="arithmetic",
                metadata={"expression": expression},
            )
        )
    return tasks
