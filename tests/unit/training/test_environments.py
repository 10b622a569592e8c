"""Environments: the protocol, the toy arithmetic environment, and hand-computed reward shaping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kap.training.environments import (
    ArithmeticEnv,
    Environment,
    RewardComponents,
    RewardConfig,
    Task,
    evaluate_arithmetic,
    final_answer,
    last_integer,
    make_arithmetic_tasks,
    repeated_ngram_fraction,
    shaped_reward,
)

TASK = Task(id="t1", prompt="What is 2 + 3?", answer="5", domain="arithmetic")


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def assistant(content: str, *calls: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def tool(content: str) -> dict[str, Any]:
    return {"role": "tool", "content": content}


# ---- the toy environment ----


def test_arithmetic_env_is_an_environment() -> None:
    env = ArithmeticEnv()
    assert isinstance(env, Environment)
    assert [t["function"]["name"] for t in env.tools()] == ["calculator", "answer"]
    assert [t["function"]["name"] for t in ArithmeticEnv(with_calculator=False).tools()] == [
        "answer"
    ]
    assert env.reset(TASK)[-1] == {"role": "user", "content": "What is 2 + 3?"}


def test_tools_answer_and_fail_as_observations() -> None:
    env = ArithmeticEnv()
    assert env.step(call("calculator", expression="2 * (3 + 4)")) == env.step(
        call("calculator", expression="14")
    )
    ok = env.step(call("calculator", expression="17 + 25"))
    assert (ok.content, ok.done, ok.is_error) == ("42", False, False)
    for bad in ("__import__('os')", "2 ** 99", "1 / 2", "x + 1", "1 +"):
        result = env.step(call("calculator", expression=bad))
        assert result.is_error and not result.done and result.content.startswith("Error")
    assert env.step(call("calculator", expr="1")).is_error  # wrong argument name
    assert env.step(call("search", query="x")).is_error
    done = env.step(call("answer", text="5"))
    assert done.done and not done.is_error


def test_evaluate_arithmetic_refuses_everything_but_integer_arithmetic() -> None:
    assert evaluate_arithmetic("-3 + 5 * 2") == 7
    for bad in ("2 ** 3", "open('f')", "[1]", "1.5 + 1", "True + 1", "9" * 300):
        with pytest.raises(ValueError):
            evaluate_arithmetic(bad)


def test_score_reads_the_answer_tool_or_the_final_text() -> None:
    env = ArithmeticEnv()
    opening = env.reset(TASK)
    via_tool = [*opening, assistant("", call("answer", text="It is 5")), tool("Answer recorded.")]
    assert final_answer(via_tool) == "It is 5"
    assert env.score(TASK, via_tool).r_out == 1.0
    text_only = [*opening, assistant("2 + 3 makes 5")]
    verdict = env.score(TASK, text_only)
    assert verdict.values == {"correctness": 1.0} and verdict.r_proc == 0.0
    assert env.score(TASK, [*opening, assistant("5 or maybe 6")]).r_out == 0.0  # last integer
    assert env.score(TASK, [*opening, assistant("no idea")]).r_out == 0.0
    with_calc = [*opening, assistant("", call("calculator", expression="2+3")), tool("5"),
                 assistant("6")]  # fmt: skip
    assert (env.score(TASK, with_calc).r_out, env.score(TASK, with_calc).r_proc) == (0.0, 1.0)
    assert last_integer("x -12 y") == -12 and last_integer(None) is None


def test_tasks_are_reproducible_and_verified() -> None:
    tasks = make_arithmetic_tasks(20, seed=3, max_operand=9, ops=("+", "*"))
    assert tasks == make_arithmetic_tasks(20, seed=3, max_operand=9, ops=("+", "*"))
    for task in tasks:
        assert int(task.answer) == evaluate_arithmetic(task.metadata["expression"])
        assert task.prompt == f"What is {task.metadata['expression']}?"
    assert len({t.id for t in tasks}) == 20
    with pytest.raises(ValueError, match="unsupported"):
        make_arithmetic_tasks(1, seed=0, ops=("/",))


# ---- reward shaping, by hand ----

CFG = RewardConfig(free_rounds=1, round_penalty=0.1, repeat_call_penalty=0.1, ngram_size=2,
                   ngram_penalty=0.5, format_bonus=0.1, malformed_penalty=0.1)  # fmt: skip


def test_shaped_reward_hand_computed() -> None:
    calc = call("calculator", expression="2+3")
    messages = [
        *ArithmeticEnv().reset(TASK),
        assistant("x y", calc),
        tool("5"),
        assistant("x y", calc),  # the same call again
        tool("5"),
        assistant("<tool_call>{bad</tool_call>", call("answer", text="5"), call("search", q="a")),
        tool("Answer recorded."),
        tool("Error: unknown tool"),
    ]
    total, terms = shaped_reward(
        ArithmeticEnv().score(TASK, messages), 3, messages, CFG,
        known_tools={"calculator", "answer"},
    )  # fmt: skip
    # rounds 3, K 1: -0.1 * 2. Repeated calls: 1 -> 0.1. Words "x y x y <tool_call>{bad..":
    # bigrams xy yx xy y<..> -> 1 of 4 seen before -> 0.5 * 0.25. Format: answer tool +0.1,
    # one unparsed block and one unknown tool -0.1 * 2.
    assert terms == pytest.approx(
        {"correctness": 1.0, "round_penalty": -0.2, "repetition_penalty": -0.225, "format": -0.1}
    )
    assert total == pytest.approx(1.0 - 0.2 - 0.225 - 0.1)


def test_no_penalty_within_the_free_rounds() -> None:
    messages = [*ArithmeticEnv().reset(TASK), assistant("", call("answer", text="5"))]
    verdict = RewardComponents({"correctness": 1.0}, r_out=1.0)
    total, terms = shaped_reward(verdict, 1, messages, CFG)
    assert terms == {"correctness": 1.0, "round_penalty": 0.0, "repetition_penalty": 0.0,
                     "format": pytest.approx(0.1)}  # fmt: skip
    assert total == pytest.approx(1.1)
    assert shaped_reward(verdict, 4, messages, CFG)[1]["round_penalty"] == pytest.approx(-0.3)


def test_repeated_ngrams_and_term_clashes() -> None:
    assert repeated_ngram_fraction("a b c d", 2) == 0.0
    assert repeated_ngram_fraction("a b a b a b", 2) == pytest.approx(1 - 2 / 5)
    assert repeated_ngram_fraction("a", 4) == 0.0
    with pytest.raises(ValueError, match="clash"):
        shaped_reward(RewardComponents({"format": 1.0}, r_out=0.0), 1, [], CFG)
