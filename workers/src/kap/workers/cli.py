"""`kap sandbox ...`, `kap eval ...`: the workers' commands, added to `kap` through the
`kap.cli` entry points.

kap sandbox run FILE [--json] [--timeout S]
kap eval qa QUESTIONS.json --domain D --solver scripted [--k K] [--limit N] [--json]
kap eval qa QUESTIONS.json --domain D --solver http --endpoint URL --model NAME
kap eval qa QUESTIONS.json --domain D --solver local --model CHECKPOINT_DIR [--device cuda]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kap.platform.llm import ChatClient, EndpointConfig
from kap.workers.policy import HttpPolicy, Policy
from kap.workers.sandbox import BubblewrapSandbox, ExecResult, SandboxLimits
from kap.workers.scripted_policy import ScriptedPolicy
from kap.workers.verifier import ChatJudge, Judge

_err = Console(stderr=True)

sandbox_app = typer.Typer(help="The sandbox for model-written code.", no_args_is_help=True)


@sandbox_app.command("run")
def run(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Python source.")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print stdout, stderr, exit_code, timed_out as JSON.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Wall-clock seconds before the run is killed.")
    ] = None,
) -> None:
    """Run FILE in the sandbox and print what it did (exit 0 whatever the program's exit code)."""
    limits = SandboxLimits()
    if timeout is not None:
        limits = replace(limits, wall_s=timeout)
    result = BubblewrapSandbox(limits).run(file.read_text())
    if as_json:
        keys = ("stdout", "stderr", "exit_code", "timed_out")
        typer.echo(json.dumps({key: getattr(result, key) for key in keys}))
    else:
        typer.echo(_render(result), nl=False)


def _render(result: ExecResult) -> str:
    if result.timed_out:
        status = f"timed out after {result.wall_s:.2f}s (killed)"
    elif result.killed_by:
        status = f"killed by {result.killed_by} after {result.wall_s:.2f}s"
    else:
        status = f"exit code {result.exit_code} after {result.wall_s:.2f}s"
    parts = [f"{status}\n"]
    for name, text, cut in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        if text:
            end = "" if text.endswith("\n") else "\n"
            parts.append(f"--- {name}{' (truncated)' if cut else ''} ---\n{text}{end}")
    return "".join(parts)


eval_app = typer.Typer(help="Evaluate solvers on external questions.", no_args_is_help=True)


class SolverKind(StrEnum):
    SCRIPTED = "scripted"
    HTTP = "http"
    LOCAL = "local"  # a local transformers checkpoint, in process (the `local` extra)


@eval_app.command("qa")
def eval_qa(
    ctx: typer.Context,
    questions: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Questions in the MuSiQue format.")
    ],
    domain: Annotated[str, typer.Option(help="The KAG domain holding the questions' corpus.")],
    solver: Annotated[SolverKind, typer.Option(help="Which policy drives the tools.")] = (
        SolverKind.SCRIPTED
    ),
    k: Annotated[int, typer.Option(min=1, max=20, help="Passages per search (scripted).")] = 5,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    max_turns: Annotated[int, typer.Option(min=1, help="Turn budget per question.")] = 300,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (--solver http).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model name at the endpoint (http); checkpoint directory (local)."),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device of the local model.")] = "cpu",
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Tokens per reply of the local model.")
    ] = 512,
    judge_endpoint: Annotated[
        str | None, typer.Option(help="Base URL of an LLM judge for answer correctness.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge's model name.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"n", "exact_match", "f1", "evidence_recall"}.')
    ] = False,
) -> None:
    """Run the solver and verifier on QUESTIONS; print exact match, F1 and evidence recall."""
    from kap.graphstore.cli import _driver
    from kap.graphstore.embed import Embedder
    from kap.graphstore.indexing import load_domain_index, require_index_dir
    from kap.workers.qa import evaluate, summarize
    from kap.workers.solver import SolverConfig
    from kap.workers.tools import Toolset

    settings = ctx.obj
    items = json.loads(questions.read_text())[:limit]
    judge = _judge(judge_endpoint, judge_model)
    require_index_dir(settings.state_dir, domain)  # before the models load
    policy = _policy_factory(solver, k=k, endpoint=endpoint, model=model, device=device,
                             max_new_tokens=max_new_tokens)  # fmt: skip
    embedder = Embedder()
    index = load_domain_index(settings.state_dir, domain, embedder)
    db = settings.neo4j_database
    with _driver(settings) as driver, Progress(console=_err, transient=True) as bar:
        task = bar.add_task(f"solving {len(items)} questions", total=len(items))
        tools = Toolset(driver, domain, index=index, embedder=embedder,
                        sandbox=BubblewrapSandbox(), database=db, default_k=k)  # fmt: skip
        outcomes = evaluate(driver, domain, items, policy=policy, tools=tools,
                            config=SolverConfig(max_turns=max_turns), judge=judge, database=db,
                            progress=lambda _: bar.advance(task))  # fmt: skip
    figures = summarize(outcomes)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    table = Table("question", "predicted", "gold", "EM", "F1", "evidence", "turns")
    for o in outcomes:
        table.add_row(o.question[:60], str(o.prediction)[:30], o.gold[:30],
                      f"{o.verdict.components['exact_match']:.0f}",
                      f"{o.verdict.components['f1']:.2f}", f"{o.paragraphs_read}/{o.paragraphs}",
                      str(o.turns))  # fmt: skip
    Console().print(table)
    typer.echo(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in figures.items()))  # fmt: skip


def _policy_factory(
    solver: SolverKind,
    *,
    k: int,
    endpoint: str | None,
    model: str | None,
    device: str = "cpu",
    max_new_tokens: int = 512,
) -> Callable[[], Policy]:
    if solver is SolverKind.SCRIPTED:
        return lambda: ScriptedPolicy(k=k)
    if solver is SolverKind.LOCAL:
        if not model:
            raise typer.BadParameter("--solver local needs --model CHECKPOINT_DIR")
        from kap.workers.local_policy import TransformersPolicy  # torch: the `local` extra

        local = TransformersPolicy(model, device=device, max_new_tokens=max_new_tokens)
        return lambda: local  # stateless between replies: one loaded model serves every episode
    if not endpoint or not model:
        raise typer.BadParameter("--solver http needs --endpoint and --model")
    client = ChatClient(EndpointConfig(endpoint, model))
    return lambda: HttpPolicy(client)


def _judge(endpoint: str | None, model: str | None) -> Judge | None:
    if bool(endpoint) != bool(model):
        raise typer.BadParameter("--judge-endpoint and --judge-model go together")
    if not endpoint or not model:
        return None
    return ChatJudge(ChatClient(EndpointConfig(endpoint, model)))
