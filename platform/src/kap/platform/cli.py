"""The `kap` command. Members add subcommand groups through the entry-point group `kap.cli`.

kap services up | down | status [--json]
kap db upgrade | downgrade REV | current | check
kap dataset query | create | list | show | export | audit
kap worker [--queues ingest,solve] [--concurrency N]
kap version
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import entry_points
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from kap.platform import __version__
from kap.platform.cli_dataset import dataset_app
from kap.platform.cli_db import db_app
from kap.platform.cli_services import services_app
from kap.platform.errors import KapError, QueueError
from kap.platform.settings import Settings

PLUGIN_GROUP = "kap.cli"

app = typer.Typer(
    name="kap",
    help="kap: the knowledge-action platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(services_app, name="services")
app.add_typer(db_app, name="db")
app.add_typer(dataset_app, name="dataset")
queue_app = typer.Typer(help="The Celery queue.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
err = Console(stderr=True)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Build the settings once, here at the edge, for every subcommand."""
    try:
        ctx.obj = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise typer.BadParameter(
            f"{where}: {first['msg']}", param_hint="KAP_* environment"
        ) from None


@app.command()
def version() -> None:
    """Print the installed kap version."""
    typer.echo(__version__)


@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues; default: every CPU queue.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo, threads.")] = "prefork",
    include: Annotated[
        list[str] | None, typer.Option(help="Extra task modules to import (repeatable).")
    ] = None,
) -> None:
    """Start a Celery worker on the kap app (runs until stopped)."""
    from kap.platform.queue import CPU_QUEUES, configure

    celery = configure(ctx.obj, extra_modules=include or ())
    argv = [
        "worker",
        "-Q",
        queues or ",".join(CPU_QUEUES),
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "-P",
        pool,
    ]
    celery.worker_main([*argv, "-n", f"kap-{os.getpid()}@%h"])


@queue_app.command("ping")
def queue_ping(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a worker.")] = 60.0,
    queue: Annotated[str, typer.Option(help="Queue to send the ping to.")] = "default",
) -> None:
    """Round-trip a task through the broker and a running worker; print the worker's answer."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    from kombu.exceptions import OperationalError

    from kap.platform.queue import configure, ping

    celery = configure(ctx.obj, load_tasks=False)
    try:  # fail fast and clearly instead of inside Celery's result-consumer retries
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except OperationalError as exc:
        raise QueueError(f"cannot reach the broker: {exc}") from None
    sent = time.monotonic()
    result = ping.apply_async(args=["hello"], queue=queue)
    try:
        answer = result.get(timeout=timeout)
    except CeleryTimeout:
        result.revoke()
        raise QueueError(
            f"no worker answered within {timeout:.0f}s (is `kap worker` running?)"
        ) from None
    answer["round_trip_ms"] = round((time.monotonic() - sent) * 1000, 1)
    typer.echo(json.dumps(answer))


def _add_plugins() -> None:
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            sub = ep.load()
        except ImportError as exc:  # a member installed without its extras must not break kap
            err.print(f"[yellow]kap: skipping `{ep.name}` commands ({exc})[/]")
            continue
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=ep.name)  # a command group: `kap graph ...`
        else:
            app.command(name=ep.name)(sub)  # a single command: `kap ingest ...`


def main() -> None:
    _add_plugins()
    try:
        app()
    except KapError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
