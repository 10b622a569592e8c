"""`kap train ...`: the three training stages, added to `kap` through the `kap.cli` entry points.

    kap train sft --config configs/train/sft-tiny.yaml [--dataset NAME@V] [--set lr=1e-4]
    kap train teacher --config configs/train/teacher-tiny.yaml [--set run.model=DIR]
    kap train distill --config configs/train/distill-tiny.yaml [--json]

On GPUs the same commands run under torchrun, one process per GPU (FSDP2 shards the model):

    torchrun --standalone --nproc-per-node 8 -m kap.training.cli sft --config FILE
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m kap.training.cli sft --config FILE

Metrics go to PostgreSQL (`training_runs`, `run_metrics`) unless `--no-record`, and always to
`<output_dir>/metrics.jsonl`. The run's curves (first and last value of each metric) are printed
at the end, with the directory of the trained model.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from kap.platform.errors import KapError
from kap.platform.settings import Settings
from kap.training.errors import TrainingError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from kap.training.stages import StageResult

app = typer.Typer(help="Train: SFT, GRPO domain teachers, multi-teacher distillation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)  # fmt: skip
console = Console(stderr=True)

ConfigOpt = Annotated[
    str, typer.Option("--config", "-c", help="The stage's YAML file (see configs/train/).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a field: KEY=VALUE, e.g. lr=1e-4 or run.model=DIR."),
]
RecordOpt = Annotated[
    bool, typer.Option("--record/--no-record", help="Write the run and its metrics to PostgreSQL.")
]
RunKeyOpt = Annotated[
    str | None,
    typer.Option(help="Idempotency key of the run row: a rerun with the same key reuses it."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def database(settings: Settings) -> sa.Engine:
    """An engine on the trajectory store, checked to be reachable and migrated."""
    import sqlalchemy as sa

    from kap.platform.db.session import make_engine

    url = settings.resolved_database_url()
    engine = make_engine(url, pool_size=1, max_overflow=1, application_name="kap-train")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1 FROM training_runs LIMIT 0"))
    except sa.exc.ProgrammingError:
        raise TrainingError(
            "the trajectory store has no training_runs table: run `kap db upgrade`"
        ) from None
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise TrainingError(
            f"cannot reach PostgreSQL ({reason}); start it with `kap services up`, "
            "or pass --no-record"
        ) from None
    return engine


def _settings(ctx: typer.Context) -> Settings:
    # Under `kap` the root callback built them; under `python -m kap.training.cli`, build here.
    return ctx.obj if isinstance(ctx.obj, Settings) else Settings()


def _run(
    ctx: typer.Context, stage: str, config: str, overrides: list[str] | None, *,
    record: bool, run_key: str | None, dataset: str | None = None, as_json: bool = False,
) -> None:  # fmt: skip
    from kap.training.datasets import load_snapshot
    from kap.training.stages import Recording, run_stage

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = _settings(ctx)
    engine = database(settings) if record or dataset else None
    snapshot = load_snapshot(engine, dataset) if engine is not None and dataset else None
    recording = Recording(engine if record else None, run_key, snapshot)
    result = run_stage(stage, config, overrides or (), recording)
    if result.model_dir is None:  # ranks other than 0 print nothing
        return
    if as_json:
        typer.echo(json.dumps(_as_dict(result)))
    else:
        _print(result)


def _as_dict(result: StageResult) -> dict[str, object]:
    return {
        "stage": result.stage,
        "model_dir": str(result.model_dir),
        "run_id": result.run_id,
        "curves": {name: {"start": a, "end": b} for name, (a, b) in result.curves.items()},
    }


# Curves worth a line at the end of each stage, in this order; the rest are in the metrics file.
SHOWN = ("loss", "eval_loss", "reward_mean", "correct_mean", "held_out/reward_mean",
         "held_out/correct_mean")  # fmt: skip


def _print(result: StageResult) -> None:
    table = Table("metric", "start", "end", title=f"{result.stage}: curves (first and last value)")
    names = [n for n in SHOWN if n in result.curves]
    names += sorted(n for n in result.curves if n.startswith(("held_out/kl/", "held_out/full_kl/")))
    for name in names:
        start, end = result.curves[name]
        table.add_row(name, f"{start:.4f}", f"{end:.4f}")
    Console().print(table)
    typer.echo(f"model: {result.model_dir}")
    if result.run_id:
        typer.echo(f"run: {result.run_id} (training_runs, run_metrics)")


@app.command()
def sft(
    ctx: typer.Context, config: ConfigOpt, overrides: SetOpt = None, record: RecordOpt = True,
    run_key: RunKeyOpt = None, as_json: JsonOpt = False,
    dataset: Annotated[
        str | None,
        typer.Option(help="A frozen dataset (id, NAME or NAME@VERSION) instead of the data file."),
    ] = None,
) -> None:  # fmt: skip
    """Stage 1: full-domain SFT on tool-using conversations (resumes from its checkpoints)."""
    _run(ctx, "sft", config, overrides, record=record, run_key=run_key, dataset=dataset,
         as_json=as_json)  # fmt: skip


@app.command()
def teacher(
    ctx: typer.Context, config: ConfigOpt, overrides: SetOpt = None, record: RecordOpt = True,
    run_key: RunKeyOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Stage 2: a GRPO domain teacher on multi-turn tool episodes."""
    _run(ctx, "teacher", config, overrides, record=record, run_key=run_key, as_json=as_json)


@app.command()
def distill(
    ctx: typer.Context, config: ConfigOpt, overrides: SetOpt = None, record: RecordOpt = True,
    run_key: RunKeyOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Stage 3: multi-teacher, domain-routed on-policy distillation with SVA."""
    _run(ctx, "distill", config, overrides, record=record, run_key=run_key, as_json=as_json)


def main() -> None:
    """`python -m kap.training.cli STAGE ...` (what torchrun launches on every rank)."""
    try:
        app()
    except KapError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
