"""`kap campaign ...`: run, watch, cancel, resume and re-judge self-play campaigns.

kap campaign run CONFIG [--wait] [--json]
kap campaign status ID [--wait] [--json]
kap campaign cancel ID
kap campaign resume ID
kap campaign reverify ID [--version V]

`run` writes the campaign and its ledger, then enqueues every item; the work happens in
`kap worker` processes. `--wait` (on `run` and `status`) shows a progress bar and acts as the
reconciler meanwhile: every few seconds it re-enqueues items that are due (pending again after
an error, or queued for longer than the config's `stuck_after_s`).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    import sqlalchemy as sa

    from kap.platform.settings import Settings

campaign_app = typer.Typer(help="Self-play campaigns.", no_args_is_help=True)
_err = Console(stderr=True)

IdArg = Annotated[str, typer.Argument(help="The campaign id (printed by `kap campaign run`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the status as JSON.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Reconcile and show progress until done.")]
PollOpt = Annotated[float, typer.Option(min=0.1, help="Seconds between reconciler passes.")]


def _engine(settings: Settings) -> sa.Engine:
    from kap.platform.db.session import make_engine

    return make_engine(settings.resolved_database_url(), pool_size=1, application_name="kap-cli")


def _id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a campaign id (a UUID)") from None


def _configure(settings: Settings) -> None:
    import atexit

    from kap.platform.queue import configure

    celery = configure(settings)
    consumer = celery.backend.result_consumer  # the backend loaded now, not at exit

    def release() -> None:
        # Each sent task's result subscribes to its Redis channel and unsubscribes when it is
        # collected, which for some happens in the interpreter's shutdown (a traceback on
        # exit). Close the subscriber now: its subscriptions end with its connection.
        consumer.stop()
        subscribed = getattr(consumer, "subscribed_to", None)
        if subscribed is not None:
            subscribed.clear()

    atexit.register(release)


@campaign_app.command("run")
def run(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Campaign YAML.")],
    wait: WaitOpt = False,
    poll: PollOpt = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Create the campaign and its ledger, then enqueue every item."""
    from kap.workers.campaign import CampaignConfig, create_campaign
    from kap.workers.tasks import enqueue_due

    settings = ctx.obj
    parsed = CampaignConfig.from_yaml(config)
    engine = _engine(settings)
    _configure(settings)
    campaign_id = create_campaign(engine, parsed)
    sent = enqueue_due(engine, campaign_id)
    _err.print(f"campaign {campaign_id}: {len(sent)} items enqueued ({parsed.name})")
    _finish(engine, campaign_id, wait=wait, poll=poll, as_json=as_json)


@campaign_app.command("status")
def status(
    ctx: typer.Context,
    campaign_id: IdArg,
    wait: WaitOpt = False,
    poll: PollOpt = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Counts by item status, accepted and rejected tasks with reasons, pass rate."""
    engine = _engine(ctx.obj)
    if wait:
        _configure(ctx.obj)
    _finish(engine, _id(campaign_id), wait=wait, poll=poll, as_json=as_json)


@campaign_app.command("cancel")
def cancel(ctx: typer.Context, campaign_id: IdArg) -> None:
    """Cancel: open items become cancelled; queued work finds the campaign cancelled and stops."""
    from kap.workers.campaign import cancel_campaign

    n = cancel_campaign(_engine(ctx.obj), _id(campaign_id))
    typer.echo(f"cancelled; {n} open items cancelled")


@campaign_app.command("resume")
def resume(
    ctx: typer.Context, campaign_id: IdArg, wait: WaitOpt = False, poll: PollOpt = 2.0
) -> None:
    """Reopen cancelled and failed items and enqueue what is due."""
    from kap.workers.campaign import reopen_campaign
    from kap.workers.tasks import enqueue_due

    engine, cid = _engine(ctx.obj), _id(campaign_id)
    _configure(ctx.obj)
    reopened = reopen_campaign(engine, cid)
    sent = enqueue_due(engine, cid)
    _err.print(f"{reopened} items reopened, {len(sent)} enqueued")
    _finish(engine, cid, wait=wait, poll=poll, as_json=False)


@campaign_app.command("reverify")
def reverify(
    ctx: typer.Context,
    campaign_id: IdArg,
    version: Annotated[
        str, typer.Option(help="Verifier version: a new one adds verdict rows.")
    ] = "1",
) -> None:
    """Re-judge the campaign's stored trajectories (the solver does not run again)."""
    from kap.workers.campaign import load_config
    from kap.workers.judging import judge_campaign
    from kap.workers.tasks import VERIFIER

    engine, cid = _engine(ctx.obj), _id(campaign_id)
    config, _ = load_config(engine, cid)
    summary = judge_campaign(engine, cid, config, verifier=VERIFIER, version=version)
    typer.echo(json.dumps(summary))


# ---- waiting and printing ----


def _finish(
    engine: sa.Engine, campaign_id: uuid.UUID, *, wait: bool, poll: float, as_json: bool
) -> None:
    from kap.workers.campaign import campaign_status
    from kap.workers.tasks import enqueue_due

    facts = campaign_status(engine, campaign_id)
    if wait:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=_err, transient=True) as bar:
            task = bar.add_task(facts["name"], total=facts["total"])
            while facts["finished"] < facts["total"] and facts["status"] != "cancelled":
                time.sleep(poll)
                enqueue_due(engine, campaign_id)  # the reconciler's pass
                facts = campaign_status(engine, campaign_id)
                bar.update(task, completed=facts["finished"])
    if as_json:
        typer.echo(json.dumps(facts))
    else:
        _print(facts)


def _print(facts: dict[str, Any]) -> None:
    table = Table("", "count", title=f"campaign {facts['name']} ({facts['status']})")
    for name, n in facts["items"].items():
        if n:
            table.add_row(f"items {name}", str(n))
    table.add_row("tasks accepted", str(facts["tasks_accepted"]))
    table.add_row("tasks rejected", str(facts["tasks_rejected"]))
    for reason, n in sorted(facts["rejection_reasons"].items()):
        table.add_row(f"  failed {reason}", str(n))
    table.add_row("trajectories", str(facts["trajectories"]))
    table.add_row("pass rate", f"{facts['pass_rate']:.1%}")
    Console().print(table)
    typer.echo(f"campaign id: {facts['campaign_id']}")
