"""The one Celery app of kap. Start a worker with `kap worker [--queues ingest,solve]`.

kap-workers (queues ingest, propose, solve, verify) and kap-training (queue train) register
their tasks on this app without importing each other: each names its task modules under the
entry-point group `kap.tasks`, which `configure()` imports.

Reliability, the same for every task: JSON only; a task is acknowledged after it ran
(`acks_late`) and requeued when its worker dies (`task_reject_on_worker_lost`), so tasks must
be idempotent; a worker reserves one task at a time (prefetch 1) so long tasks do not hold
others hostage; and Redis's visibility timeout is above every task's time limit, since Redis
redelivers any task unacknowledged for that long, even one still running.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from celery import Celery

from kap.platform.errors import QueueError
from kap.platform.settings import Settings

QUEUES = ("default", "ingest", "propose", "solve", "verify", "train")
CPU_QUEUES = ("default", "ingest", "propose", "solve", "verify")
TASK_MODULES_GROUP = "kap.tasks"

app = Celery("kap")


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.resolved_broker_url()
    transport = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_url": broker,
        "result_backend": broker,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": settings.task_time_limit,
        # No global soft limit: Celery copies it onto every task, where it would exceed the
        # hard limit of any task that sets a shorter one. Tasks that clean up set their own.
        "task_track_started": True,
        "task_default_queue": "default",
        # By name, so platform never imports the members: training tasks need the GPU nodes.
        "task_routes": {
            "kap.training.*": {"queue": "train"},
            "kap.workers.propose": {"queue": "propose"},
            "kap.workers.solve": {"queue": "solve"},
            "kap.workers.verify": {"queue": "verify"},
            "kap.workers.record": {"queue": "verify"},
            "kap.workers.item_failed": {"queue": "verify"},
        },
        "task_create_missing_queues": True,
        "result_expires": 7 * 24 * 3600,
        "enable_utc": True,
        "timezone": "UTC",
    }


def configure(
    settings: Settings, *, load_tasks: bool = True, extra_modules: Iterable[str] = ()
) -> Celery:
    """Point the app at the broker of `settings`, load the members' task modules, check limits."""
    app.conf.update(celery_config(settings))
    if load_tasks:
        modules = [ep.value for ep in entry_points(group=TASK_MODULES_GROUP)]
        for module in [*modules, *extra_modules]:
            import_module(module)
    check_time_limits(app)
    return app


def check_time_limits(celery: Celery) -> None:
    """Refuse any task whose hard time limit is missing or not below the visibility timeout."""
    visibility = celery.conf.broker_transport_options.get("visibility_timeout")
    if visibility is None:
        raise QueueError("broker_transport_options has no visibility_timeout")
    for name, task in celery.tasks.items():
        if name.startswith("celery."):
            continue
        limit = task.time_limit or celery.conf.task_time_limit
        if limit is None or limit >= visibility:
            raise QueueError(
                f"task {name}: time limit {limit}s must be set and below the broker's "
                f"visibility timeout {visibility}s, or Redis redelivers it while it still runs"
            )


@app.task(name="kap.platform.ping", acks_late=True)  # type: ignore[untyped-decorator]
def ping(payload: str) -> dict[str, Any]:
    """Round-trip check: echo the payload with the worker's identity (pure, so idempotent)."""
    return {"pong": payload, "pid": os.getpid(), "hostname": socket.gethostname()}
