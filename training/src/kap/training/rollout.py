"""Rollout engines and the multi-turn tool loop that turns a policy into scored episodes.

Engines (`RolloutEngine`): `generate(prompts)` samples completions of token-id prompts and
returns the sampled ids with their behaviour log-probabilities; `sync_weights(model)` pushes the
trainer's weights into the engine. `TransformersEngine` runs HF `generate` (CPU tests, small
models; with the trainer's own model object it needs no sync); `VLLMEngine` runs vLLM on GPUs.
Behaviour log-probs are those of the distribution each token was drawn from: the model's
softmax at `temperature`, after top-p truncation and renormalization (at temperature 1 and
top_p 1: the model's own log-probs). Generation stops after a stop token (`<|im_end|>`), which
is kept in the output: the policy learns to stop.

The tool loop (`run_episode`, batched: `run_episodes`): render the opening messages with the
chat template and the tool schemas (add_generation_prompt) → generate → parse the
`<tool_call>{json}</tool_call>` blocks of the completion into OpenAI tool calls → env.step each →
append the tool messages → generate again, until a step says done, a turn has no tool call, or
`max_rounds`. A malformed block (bad JSON, no name, arguments not an object, no closing tag) or a
call to an unknown tool is a format error: counted, answered with an error observation, and the
episode goes on.

Token bookkeeping never re-tokenizes sampled text: an episode's ids are the rendered prompt, the
sampled ids verbatim (trained, `generated=True`), and for each later turn the ids of the rendered
tool turn and the next assistant header (masked). Those added pieces start at `<|im_end|>`, a
special token BPE never merges across, so the ids equal the tokenization of the full rendered
conversation whenever the sampled text is in canonical form. A turn cut at `max_new_tokens` gets
a masked `<|im_end|>` appended before the tool turn.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from kap.training.chat import render_text
from kap.training.environments import (
    Environment,
    Message,
    RewardConfig,
    Task,
    shaped_reward,
    tool_names,
)
from kap.training.errors import TrainingError
from kap.training.tokenizer import IM_END

# ---- engines ----


@dataclass(frozen=True)
class Generation:
    """One sampled completion: token ids (stop token included) and their behaviour log-probs."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (ended with a stop token) or "length" (max_new_tokens)


class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]: ...

    def sync_weights(self, model: nn.Module) -> None: ...


def _stop_ids(
    tokenizer: PreTrainedTokenizerBase, stop_token_ids: Sequence[int] | None
) -> list[int]:
    if stop_token_ids is not None:
        return list(stop_token_ids)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if not isinstance(im_end, int) or im_end == tokenizer.unk_token_id:
        raise TrainingError(f"the tokenizer has no {IM_END} token to stop generation at")
    return [im_end]


def _cut_at_stop(ids: list[int], logps: list[float], stops: Sequence[int]) -> Generation:
    for i, tok in enumerate(ids):
        if tok in stops:
            return Generation(ids[: i + 1], logps[: i + 1], "stop")
    return Generation(ids, logps, "length")


class TransformersEngine:
    """HF `generate` with sampling; behaviour log-probs from the processed scores.

    Prompts are left-padded into batches of `max_batch_size`; `seed` makes a call reproducible
    without touching the global RNG. With the trainer's model object itself, `sync_weights` is
    a no-op; with another copy it loads the trainer's state dict.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        stop_token_ids: Sequence[int] | None = None,
        max_batch_size: int = 64,
    ) -> None:
        self.model = model
        self.stop_token_ids = _stop_ids(tokenizer, stop_token_ids)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.stop_token_ids[0])
        self.max_batch_size = max_batch_size

    def sync_weights(self, model: nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]:
        if any(not p for p in prompts):
            raise TrainingError("every prompt needs at least one token")
        out: list[Generation] = []
        was_training = self.model.training
        nn.Module.train(self.model, mode=False)
        try:
            with torch.random.fork_rng(devices=self._rng_devices()), torch.no_grad():
                if seed is not None:
                    torch.manual_seed(seed)
                for lo in range(0, len(prompts), self.max_batch_size):
                    chunk = prompts[lo : lo + self.max_batch_size]
                    out.extend(self._generate(chunk, max_new_tokens, temperature, top_p))
        finally:
            self.model.train(was_training)
        return out

    def _rng_devices(self) -> list[torch.device]:
        device = next(self.model.parameters()).device
        return [device] if device.type == "cuda" else []

    def _generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float
    ) -> list[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        sample = temperature > 0
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
        result: Any = self.model.generate(  # type: ignore[operator]
            input_ids=ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
        new_B_T = result.sequences[:, width:]
        # scores: the processed logits each token was sampled from (temperature, top-p applied)
        scores_B_T_V = torch.stack(result.scores, dim=1).float()
        logp_B_T = scores_B_T_V.log_softmax(-1).gather(-1, new_B_T[..., None]).squeeze(-1)
        return [
            _cut_at_stop(new_B_T[row].tolist(), logp_B_T[row].tolist(), self.stop_token_ids)
            for row in range(len(prompts))
        ]


class VLLMEngine:
    """vLLM offline engine on a local checkpoint directory (GPU); vllm is imported lazily.

    Built in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set here before vllm is imported when
    `in_process`), so `sync_weights` runs `llm.apply_model(fn)`, which on the in-process
    engine calls `fn(model)` directly on the driver worker's model: `fn` is `model.load_weights(
    (name, tensor) ...)` with the trainer's HF-named state dict (vLLM's loaders map HF names
    onto its fused qkv / gate_up parameters), then `llm.reset_prefix_cache()`, because cached
    KV blocks were computed with the old weights. Tensor parallel size 1 only: the full tensors
    are loaded into every worker (FSDP2 DTensors are gathered with `full_tensor()` first).

    Log-probs: `logprobs_mode="processed_logprobs"` and `SamplingParams(logprobs=0)`, so the
    returned log-prob of each sampled token is that of the distribution it was drawn from
    (after temperature and top-p), as `TransformersEngine` reports it.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        stop_token_ids: Sequence[int],
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        seed: int = 0,
        in_process: bool = True,
        **llm_kwargs: Any,
    ) -> None:
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # vLLM's switch, not kap's
        try:
            import vllm  # type: ignore[import-not-found]
        except ImportError as exc:
            raise TrainingError("VLLMEngine needs vllm: install kap-training[gpu]") from exc
        self._vllm = vllm
        self.stop_token_ids = list(stop_token_ids)
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            **llm_kwargs,
        )

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]:
        vllm = self._vllm
        params = [
            vllm.SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                stop_token_ids=self.stop_token_ids,
                logprobs=0,
                seed=None if seed is None else seed + i,
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        inputs = [vllm.TokensPrompt(prompt_token_ids=p) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [self._generation(out.outputs[0]) for out in outputs]

    def _generation(self, completion: Any) -> Generation:
        ids = list(completion.token_ids)
        logps = [
            float(step[tok].logprob) for tok, step in zip(ids, completion.logprobs, strict=True)
        ]
        reason = "stop" if completion.finish_reason == "stop" else "length"
        if reason == "stop" and (not ids or ids[-1] not in self.stop_token_ids):
            # a stop token vLLM did not report: add it so the policy still learns to stop
            ids, logps = [*ids, self.stop_token_ids[0]], [*logps, 0.0]
        return Generation(ids, logps, reason)

    def sync_weights(self, model: nn.Module) -> None:
        weights = [(name, _full(t)) for name, t in model.state_dict().items()]

        def load(vllm_model: nn.Module) -> None:
            vllm_model.load_weights(weights)  # type: ignore[operator]

        self.llm.apply_model(load)
        self.llm.reset_prefix_cache()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    gather: Callable[[], torch.Tensor] | None = getattr(tensor, "full_tensor", None)
    return (gather() if gather is not None else tensor).detach()


# ---- parsing tool calls ----

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ParsedTurn:
    """An assistant completion split into text and tool calls."""

    content: str  # text outside the well-formed blocks; malformed blocks stay here verbatim
    tool_calls: list[dict[str, Any]]  # OpenAI-style calls, arguments as a JSON object string
    errors: list[str]  # one error observation per malformed block


def _parse_block(body: str) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of one block's JSON; ValueError with the reason when malformed."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg})") from exc
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise ValueError('needs {"name": <function-name>, "arguments": <args-json-object>}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ValueError(f"has arguments that are not valid JSON ({exc.msg})") from exc
    if not isinstance(arguments, dict):
        raise ValueError("has arguments that are not a JSON object")
    return call["name"], arguments


def parse_tool_calls(text: str, *, id_prefix: str = "call") -> ParsedTurn:
    """Split `text` at its `<tool_call>...</tool_call>` blocks (Qwen3 / Hermes format)."""
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    errors: list[str] = []
    pos = 0
    for n, match in enumerate(_BLOCK.finditer(text), start=1):
        content.append(text[pos : match.start()])
        pos = match.end()
        try:
            name, arguments = _parse_block(match.group(1).strip())
        except ValueError as exc:
            errors.append(f"Error: tool call {n} {exc}.")
            content.append(match.group(0))
            continue
        calls.append(
            {
                "id": f"{id_prefix}_{len(calls)}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    rest = text[pos:]
    if "<tool_call>" in rest:
        errors.append("Error: a tool call was not closed with </tool_call>.")
    content.append(rest)
    return ParsedTurn("".join(content).strip(), calls, errors)


# ---- episodes ----


@dataclass
class Episode:
    """One scored multi-turn episode: messages, and token ids aligned with masks and log-probs."""

    task: Task
    messages: list[Message]  # opening messages, assistant turns (OpenAI tool_calls), tool results
    tools: list[dict[str, Any]]
    token_ids: list[int]  # what the policy read and wrote, in order
    generated: list[bool]  # True on tokens the policy sampled: the only trained tokens
    logprobs: list[float]  # behaviour log-prob of each sampled token, 0.0 elsewhere
    rounds: int = 0  # assistant turns generated
    format_errors: int = 0  # malformed blocks and unknown tools
    end: str = ""  # "done" (a step ended it), "final_text" (no tool call), "max_rounds"
    reward: float = 0.0  # shaped total
    components: dict[str, float] = field(default_factory=dict)  # the terms summed into reward
    correct: float = 0.0  # the verifier's r_out
    r_proc: float = 0.0  # the verifier's r_proc

    @property
    def response_tokens(self) -> int:
        return sum(self.generated)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


_DUMMY_TURN: list[Message] = [
    {"role": "user", "content": "x"},
    {"role": "assistant", "content": None, "tool_calls": [{"name": "x", "arguments": "{}"}]},
]


def tool_turn_text(tokenizer: PreTrainedTokenizerBase, observations: list[Message]) -> str:
    """The text from the end of an assistant's `<|im_end|>` to the next assistant header."""
    before = render_text(tokenizer, _DUMMY_TURN)
    after = render_text(tokenizer, _DUMMY_TURN + observations, add_generation_prompt=True)
    if not after.startswith(before) or not before.endswith(f"{IM_END}\n"):
        raise TrainingError("the chat template does not render tool turns append-only")
    return after[len(before) - 1 :]  # from the "\n" after <|im_end|>


def _observation_messages(
    calls: list[dict[str, Any]], results: list[str], errors: list[str]
) -> list[Message]:
    if calls:
        msgs: list[Message] = [
            {"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"], "content": r}
            for c, r in zip(calls, results, strict=True)
        ]
        return msgs + [{"role": "tool", "content": e} for e in errors]
    # No well-formed call: the errors go in a user turn laid out as tool responses (a tool
    # message must follow tool_calls); it renders exactly like a turn of tool messages.
    body = "\n".join(f"<tool_response>\n{e}\n</tool_response>" for e in errors)
    return [{"role": "user", "content": body}]


class _Running:
    def __init__(self, env: Environment, task: Task, tokenizer: PreTrainedTokenizerBase) -> None:
        self.env = env
        tools = env.tools()
        messages = env.reset(task)
        prompt = render_text(tokenizer, messages, tools=tools or None, add_generation_prompt=True)
        ids = _encode(tokenizer, prompt)
        self.episode = Episode(
            task, list(messages), tools, ids, [False] * len(ids), [0.0] * len(ids)
        )
        self.known = set(tool_names(tools))

    def extend(self, ids: Sequence[int], logps: Sequence[float] | None = None) -> None:
        ep = self.episode
        ep.token_ids.extend(ids)
        ep.generated.extend([logps is not None] * len(ids))
        ep.logprobs.extend(logps if logps is not None else [0.0] * len(ids))

    def apply(
        self, gen: Generation, tokenizer: PreTrainedTokenizerBase, max_rounds: int, im_end: int
    ) -> None:
        ep = self.episode
        ep.rounds += 1
        self.extend(gen.token_ids, gen.logprobs)
        text = str(tokenizer.decode(gen.token_ids, skip_special_tokens=True))
        turn = parse_tool_calls(text, id_prefix=f"call_{ep.rounds}")
        message: Message = {"role": "assistant", "content": turn.content}
        if turn.tool_calls:
            message["tool_calls"] = turn.tool_calls
        ep.messages.append(message)
        if not turn.tool_calls and not turn.errors:
            ep.end = "final_text"
            return
        results, done = [], False
        for call in turn.tool_calls:
            name = call["function"]["name"]
            if name not in self.known:
                ep.format_errors += 1
                results.append(f"Error: unknown tool {name!r}; tools: {sorted(self.known)}.")
                continue
            observation = self.env.step(call)
            results.append(observation.content)
            done = done or observation.done
        ep.format_errors += len(turn.errors)
        observations = _observation_messages(turn.tool_calls, results, turn.errors)
        ep.messages.extend(observations)
        if done or ep.rounds >= max_rounds:
            ep.end = "done" if done else "max_rounds"
            return
        if gen.finish_reason != "stop":
            self.extend([im_end])  # close the cut turn; not sampled, so not trained
        self.extend(_encode(tokenizer, tool_turn_text(tokenizer, observations)))


def run_episodes(
    engine: RolloutEngine,
    envs: Sequence[Environment],
    tasks: Sequence[Task],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_rounds: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    reward_config: RewardConfig | None = None,
) -> list[Episode]:
    """Episodes of `tasks[i]` in `envs[i]` (one environment object each), batched per round.

    Every round sends the prompts of all unfinished episodes to one `engine.generate` call
    (seed + round index when `seed` is given). Finished episodes are scored with
    `env.score` and `shaped_reward`.
    """
    if len(envs) != len(tasks):
        raise TrainingError(f"{len(envs)} environments for {len(tasks)} tasks")
    if len(set(map(id, envs))) != len(envs):
        raise TrainingError("each episode needs its own environment object")
    cfg = reward_config or RewardConfig()
    im_end = _stop_ids(tokenizer, None)[0]
    running = [_Running(env, task, tokenizer) for env, task in zip(envs, tasks, strict=True)]
    for round_index in range(max_rounds):
        active = [r for r in running if not r.episode.end]
        if not active:
            break
        gens = engine.generate(
            [r.episode.token_ids for r in active],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=None if seed is None else seed + round_index,
        )
        for r, gen in zip(active, gens, strict=True):
            r.apply(gen, tokenizer, max_rounds, im_end)
    for r in running:
        _score(r, cfg)
    return [r.episode for r in running]


def _score(r: _Running, cfg: RewardConfig) -> None:
    ep = r.episode
    verdict = r.env.score(ep.task, ep.messages)
    ep.reward, ep.components = shaped_reward(
        verdict, ep.rounds, ep.messages, cfg, known_tools=r.known
    )
    ep.correct, ep.r_proc = float(verdict.r_out), float(verdict.r_proc)


def run_episode(
    engine: RolloutEngine,
    env: Environment,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_rounds: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    reward_config: RewardConfig | None = None,
) -> Episode:
    """One episode of `task` in `env` (see `run_episodes`)."""
    return run_episodes(
        engine, [env], [task], tokenizer, max_rounds=max_rounds, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, reward_config=reward_config,
    )[0]  # fmt: skip


def summarize(episodes: Sequence[Episode]) -> Mapping[str, float]:
    """Means over episodes: reward, correctness, rounds, response tokens, format errors."""
    n = max(len(episodes), 1)
    return {
        "reward_mean": sum(e.reward for e in episodes) / n,
        "correct_mean": sum(e.correct for e in episodes) / n,
        "rounds_mean": sum(e.rounds for e in episodes) / n,
        "response_tokens_mean": sum(e.response_tokens for e in episodes) / n,
        "format_errors_mean": sum(e.format_errors for e in episodes) / n,
    }
