"""`kap sandbox ...`: the workers' commands, added to `kap` through the `kap.cli` entry points.

kap sandbox run FILE [--json] [--timeout S]
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from kap.workers.sandbox import BubblewrapSandbox, ExecResult, SandboxLimits

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
