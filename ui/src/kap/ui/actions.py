"""What the explorer changes, it asks a worker to change: Celery tasks sent by name.

    outcome = send("kap.workers.cancel_campaign", [campaign_id], timeout_s=15)

The UI reads the stores through a read-only role; launching or cancelling a campaign and
freezing a dataset are Celery tasks that a `kap worker` (queue `default`) runs with its own
credentials. `send` waits a bounded time for the answer and says plainly when none came.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kap.ui import stores

LAUNCH_CAMPAIGN = "kap.workers.launch_campaign"
CANCEL_CAMPAIGN = "kap.workers.cancel_campaign"
CREATE_DATASET = "kap.curation.create_dataset"


@dataclass(frozen=True)
class Outcome:
    """A sent task's fate: its id, and its result, its error, or neither (no answer in time)."""

    task_id: str
    result: Any = None
    error: str | None = None
    answered: bool = True

    def message(self, timeout_s: float) -> str:
        if not self.answered:
            return (f"No worker answered within {timeout_s:.0f} s (is `kap worker` running on "
                    f"queue `default`?). The task {self.task_id} stays queued and runs when "
                    "a worker starts.")  # fmt: skip
        if self.error is not None:
            return f"The task {self.task_id} failed: {self.error}"
        return f"Done (task {self.task_id})."


def send(name: str, args: list[Any], *, timeout_s: float = 20.0, queue: str = "default") -> Outcome:
    """Send task `name` to `queue` and wait up to `timeout_s` for its result."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    app = stores.celery()
    with app.connection_for_write() as conn:  # fail fast and clearly when Redis is down
        conn.ensure_connection(max_retries=1)
    result = app.send_task(name, args=args, queue=queue)
    try:
        value = result.get(timeout=timeout_s, propagate=False)
    except CeleryTimeout:
        return Outcome(result.id, answered=False)
    if result.failed():
        return Outcome(result.id, error=_error_text(value))
    return Outcome(result.id, result=value)


def _error_text(exc: Any) -> str:
    return (str(exc).strip() or type(exc).__name__)[:2000]


def config_files() -> list[Path]:
    """Campaign configs shipped in `configs/campaigns/` (of the working directory, else of
    the source checkout this module runs from)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[4]):
        folder = root / "configs" / "campaigns"
        if folder.is_dir():
            return sorted(folder.glob("*.y*ml"))
    return []


def parse_config(text: str) -> dict[str, Any]:
    """A campaign config from YAML text; the worker validates its fields."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a campaign config is a YAML mapping (name: ..., domain: ..., tasks: ...)")
    return data
