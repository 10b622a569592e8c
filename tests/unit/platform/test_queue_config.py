"""The Celery app's reliability settings and the time-limit guard, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from kap.platform.errors import QueueError
from kap.platform.queue import celery_config, check_time_limits
from kap.platform.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, broker_url="redis://127.0.0.1:1/0", task_time_limit=100,
                    visibility_timeout=300)  # fmt: skip


def test_reliability_settings(settings: Settings) -> None:
    conf = celery_config(settings)
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["broker_transport_options"]["visibility_timeout"] == 300
    assert conf["task_time_limit"] == 100 < conf["broker_transport_options"]["visibility_timeout"]
    assert "task_soft_time_limit" not in conf


def _app(settings: Settings) -> Celery:
    app = Celery("t", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def test_a_task_limit_above_the_visibility_timeout_is_refused(settings: Settings) -> None:
    app = _app(settings)

    @app.task(name="t.slow", time_limit=301, shared=False)
    def slow() -> None: ...

    with pytest.raises(QueueError, match=r"t.slow.*301s.*300s"):
        check_time_limits(app)


def test_tasks_within_the_limit_pass(settings: Settings) -> None:
    app = _app(settings)

    @app.task(name="t.fast", time_limit=299, shared=False)
    def fast() -> None: ...

    @app.task(name="t.default", shared=False)
    def default() -> None: ...

    check_time_limits(app)


def test_tasks_route_to_their_queues_by_name(settings: Settings) -> None:
    router = _app(settings).amqp.router
    assert router.route({}, "kap.training.run_stage")["queue"].name == "train"
    assert router.route({}, "kap.workers.solve")["queue"].name == "solve"
    assert router.route({}, "kap.workers.propose")["queue"].name == "propose"
    assert router.route({}, "kap.workers.record")["queue"].name == "verify"
    assert router.route({}, "kap.platform.ping")["queue"].name == "default"
