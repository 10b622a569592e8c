"""`kap.workers.launch_campaign` and `kap.workers.cancel_campaign`, sent by name to a real
`kap worker` (what the explorer does, holding no write role)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery.exceptions import TimeoutError as CeleryTimeout

from kap.platform.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def celery(services: Settings, worker: Path) -> Any:
    from kap.platform.queue import configure

    return configure(services, load_tasks=False)


def call(celery: Any, name: str, *args: Any) -> Any:
    result = celery.send_task(name, args=list(args))
    try:
        return result.get(timeout=60, propagate=False), result
    except CeleryTimeout:
        pytest.fail(f"no worker answered {name} within 60 s")


def items(engine: sa.Engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM campaign_items WHERE campaign_id = :c GROUP BY 1"),
            {"c": campaign_id}).all())  # fmt: skip


def test_launch_writes_the_campaign_and_cancel_closes_it(
    celery: Any, owner_engine: sa.Engine
) -> None:
    # A domain without a graph: proposals fail and go back to pending, so nothing finishes.
    config = {"name": "launched-by-task", "domain": "no-such-domain", "tasks": 4, "seed": 2}
    campaign_id, result = call(celery, "kap.workers.launch_campaign", config)
    assert result.successful(), campaign_id
    uuid.UUID(campaign_id)
    with owner_engine.connect() as conn:
        name, stored = conn.execute(sa.text("SELECT name, config FROM campaigns WHERE id = :c"),
                                    {"c": campaign_id}).one()  # fmt: skip
    assert name == "launched-by-task" and stored["tasks"] == 4 and stored["hops"] == 2
    assert sum(items(owner_engine, campaign_id).values()) == 4
    cancelled, result = call(celery, "kap.workers.cancel_campaign", campaign_id)
    assert result.successful() and cancelled == 4
    assert items(owner_engine, campaign_id) == {"cancelled": 4}
    again, _ = call(celery, "kap.workers.cancel_campaign", campaign_id)
    assert again == 0  # nothing open is left


def test_a_bad_config_or_an_unknown_campaign_fails_with_its_reason(
    celery: Any, owner_engine: sa.Engine
) -> None:
    error, result = call(celery, "kap.workers.launch_campaign", {"name": "x", "domain": "d",
                                                                 "tasks": 0})  # fmt: skip
    assert result.failed() and "tasks" in str(error)
    error, result = call(celery, "kap.workers.launch_campaign", {"name": "x", "colour": "red"})
    assert result.failed() and "domain" in str(error)  # the first problem, named
    with owner_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM campaigns WHERE name = 'x'")) == 0
    error, result = call(celery, "kap.workers.cancel_campaign", str(uuid.uuid4()))
    assert result.failed() and "no campaign" in str(error)
    error, result = call(celery, "kap.workers.cancel_campaign", "not-an-id")
    assert result.failed() and "not a campaign id" in str(error)
