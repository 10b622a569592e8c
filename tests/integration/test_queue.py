"""The Celery app against the real Redis and a real `kap worker` process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from kap.platform.queue import configure, ping
from kap.platform.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAP = str(Path(sys.executable).parent / "kap")


@pytest.fixture(scope="module")
def celery_app(kap_settings: Settings) -> Iterator[Celery]:
    from kap.platform.services.manager import ServiceManager

    ServiceManager(kap_settings).up(["redis"])
    app = configure(kap_settings, extra_modules=["tests.integration.queue_tasks"])
    yield app
    # Drop the result listener's pub/sub connection now, not during interpreter shutdown.
    app.backend.result_consumer.stop()
    app.close()


@pytest.fixture(scope="module")
def worker(celery_app: Celery, kap_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    queue = f"test-{uuid.uuid4().hex[:8]}"  # private queue: no other worker takes our tasks
    log = ROOT / ".kap-test" / "logs" / f"worker-{queue}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**kap_env, "PYTHONPATH": str(ROOT)}
    cmd = [KAP, "worker", "--queues", queue, "--concurrency", "1",
           "--include", "tests.integration.queue_tasks"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.queue = queue  # type: ignore[attr-defined]
    proc.log = log  # type: ignore[attr-defined]
    yield proc
    proc.terminate()
    proc.wait(timeout=60)


def test_a_task_round_trips_through_a_real_worker(worker: subprocess.Popen[bytes]) -> None:
    result = ping.apply_async(args=["hello"], queue=worker.queue)  # type: ignore[attr-defined]
    answer = result.get(timeout=120)
    assert answer["pong"] == "hello"
    assert answer["pid"] not in {os.getpid(), worker.pid}  # ran in the worker's pool process
    assert worker.poll() is None


def test_a_task_whose_worker_dies_is_redelivered(
    worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    from tests.integration.queue_tasks import crash_once

    marker = tmp_path / "deliveries"
    result = crash_once.apply_async(args=[str(marker)], queue=worker.queue)  # type: ignore[attr-defined]
    answer = result.get(timeout=180)
    assert answer["deliveries"] == 2
    assert marker.read_text() == "2"
    log = worker.log.read_text()  # type: ignore[attr-defined]
    assert "WorkerLostError" in log or "exited" in log


def test_a_pickled_message_is_refused(worker: subprocess.Popen[bytes]) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    result = ping.apply_async(args=["x"], serializer="pickle", queue=worker.queue)  # type: ignore[attr-defined]
    with pytest.raises(CeleryTimeout):
        result.get(timeout=10)
    result.backend.remove_pending_result(result)  # stop listening now, not at exit
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log.read_text()  # type: ignore[attr-defined]


def test_a_ping_with_no_worker_times_out_cleanly(kap_env: dict[str, str]) -> None:
    result = subprocess.run(
        [KAP, "queue", "ping", "--timeout", "2", "--queue", f"empty-{uuid.uuid4().hex[:6]}"],
        env=kap_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no worker answered within 2s" in " ".join(result.stderr.split())
