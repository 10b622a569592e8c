"""`kap services up | down | status`: lifecycles, idempotence and clear failures, for real."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from kap.platform.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAP = str(Path(sys.executable).parent / "kap")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kap(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([KAP, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"kap {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture
def scratch_env(kap_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A state directory and ports of its own (inside the repo: the postgres user must reach it)."""
    home = ROOT / ".kap-test" / "scratch" / uuid.uuid4().hex[:8]
    env = {
        **kap_env,
        "KAP_HOME": str(home),
        "KAP_POSTGRES_PORT": str(free_port()),
        "KAP_REDIS_PORT": str(free_port()),
        "KAP_NEO4J_PORT": str(free_port()),
    }
    yield env
    kap(env, "services", "down", check=False)
    shutil.rmtree(home, ignore_errors=True)


def test_status_json_gives_working_connection_facts(services: Settings, kap_env: dict) -> None:
    facts = json.loads(kap(kap_env, "services", "status", "--json").stdout)
    for key in ("neo4j_uri", "neo4j_user", "neo4j_password", "database_url", "broker_url"):
        assert facts[key], key
    assert {name: st["up"] for name, st in facts["services"].items()} == {
        "postgres": True, "redis": True, "neo4j": True,
    }  # fmt: skip
    engine = sa.create_engine(facts["database_url"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "kap"
    engine.dispose()


def test_check_runs_a_query_on_each_store(services: Settings, kap_env: dict) -> None:
    answers = json.loads(kap(kap_env, "services", "check").stdout)
    assert answers["neo4j"]["RETURN 1"] == 1
    assert answers["postgres"]["SELECT 1"] == 1
    assert answers["redis"]["PING"] is True


def test_postgres_and_redis_lifecycle_is_idempotent_and_keeps_data(scratch_env: dict) -> None:
    only = ["--only", "postgres", "--only", "redis"]
    kap(scratch_env, "services", "up", *only)
    facts = json.loads(kap(scratch_env, "services", "status", "--json").stdout)
    pids = {n: s["pid"] for n, s in facts["services"].items() if n != "neo4j"}
    assert all(pids.values()) and facts["services"]["neo4j"]["up"] is False

    again = kap(scratch_env, "services", "up", *only)
    assert again.stderr.count("already running") == 2
    dsn = sa.make_url(facts["database_url"]).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    kap(scratch_env, "services", "down", *only)
    down = json.loads(kap(scratch_env, "services", "status", "--json").stdout)["services"]
    assert not down["postgres"]["up"] and not down["redis"]["up"]
    assert "not running" in kap(scratch_env, "services", "down", *only).stderr

    kap(scratch_env, "services", "up", *only)
    engine = sa.create_engine(facts["database_url"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT v FROM kept")).scalar() == 42
    engine.dispose()


def test_secrets_are_private(scratch_env: dict) -> None:
    kap(scratch_env, "services", "up", "--only", "redis")
    secret = Path(scratch_env["KAP_HOME"]) / "secrets" / "redis"
    assert secret.stat().st_mode & 0o077 == 0
    assert (secret.parent.stat().st_mode & 0o077) == 0


def test_a_taken_port_is_named_with_the_log(scratch_env: dict) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**scratch_env, "KAP_REDIS_PORT": str(port)}
        result = kap(env, "services", "up", "--only", "redis", check=False)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {port}" in message and "already in use" in message
    assert "logs/redis.log" in message
    assert "Traceback" not in result.stderr


def test_a_failed_neo4j_start_names_the_log(scratch_env: dict) -> None:
    env = {**scratch_env, "KAP_NEO4J_HEAP": "lots"}  # the JVM refuses this heap size
    result = kap(env, "services", "up", "--only", "neo4j", check=False)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "neo4j" in message and "logs/neo4j.log" in message
    assert "Invalid maximum heap size" in message  # the log's tail is shown
    assert "Traceback" not in result.stderr


def test_an_existing_postgres_is_used_not_started(database_url: str, scratch_env: dict) -> None:
    env = {**scratch_env, "KAP_DATABASE_URL": database_url}
    kap(env, "services", "up", "--only", "postgres")
    facts = json.loads(kap(env, "services", "status", "--json").stdout)
    assert facts["database_url"] == database_url
    assert facts["services"]["postgres"] == {**facts["services"]["postgres"], "up": True,
                                             "local": False}  # fmt: skip
    assert not (Path(env["KAP_HOME"]) / "postgres").exists()


def test_an_unreachable_existing_server_is_an_error(scratch_env: dict) -> None:
    url = f"postgresql+psycopg://kap:nope@127.0.0.1:{free_port()}/kap"
    result = kap({**scratch_env, "KAP_DATABASE_URL": url}, "services", "up", "--only", "postgres",
                 check=False)  # fmt: skip
    assert result.returncode == 1 and "not reachable" in result.stderr
