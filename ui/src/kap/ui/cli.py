"""`kap ui`: run the Streamlit explorer (added to `kap` through the `kap.cli` entry points).

kap ui [--port 8501] [--address 127.0.0.1]   (or KAP_UI_ADDRESS / STREAMLIT_SERVER_ADDRESS)

Prints the URL, then replaces itself with `python -m streamlit run` on the explorer's frame;
the environment (the `KAP_*` settings) passes through unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

APP = Path(__file__).resolve().parent / "streamlit_app.py"


def command(app: Path, port: int, address: str) -> list[str]:
    """The streamlit command line that serves `app`."""
    return [sys.executable, "-m", "streamlit", "run", str(app),
            "--server.port", str(port), "--server.address", address,
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer"]  # fmt: skip


def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8501,
    address: Annotated[
        str,
        typer.Option(
            # The UI image sets STREAMLIT_SERVER_ADDRESS=0.0.0.0; an explicit flag would hide it.
            envvar=["KAP_UI_ADDRESS", "STREAMLIT_SERVER_ADDRESS"],
            help="Address to bind; 0.0.0.0 serves every interface.",
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the explorer: campaigns, graph regions, trajectories, curation, training."""
    shown = "127.0.0.1" if address in ("0.0.0.0", "::") else address
    typer.echo(f"kap explorer: http://{shown}:{port}/  (Ctrl-C stops it)")
    sys.stdout.flush()
    argv = command(APP, port, address)
    os.execv(argv[0], argv)
