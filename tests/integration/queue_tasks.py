"""Tasks that exist only for the queue tests; a test worker imports them with --include."""

from __future__ import annotations

import os
from pathlib import Path

from kap.platform.queue import app


@app.task(name="kap.tests.crash_once", acks_late=True, time_limit=60)  # type: ignore[untyped-decorator]
def crash_once(marker: str) -> dict[str, int]:
    """Kill the worker process running it on first delivery; succeed on redelivery."""
    path = Path(marker)
    deliveries = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(deliveries))
    if deliveries == 1:
        os._exit(1)  # the worker process dies mid-task, before acknowledging it
    return {"deliveries": deliveries, "pid": os.getpid()}
