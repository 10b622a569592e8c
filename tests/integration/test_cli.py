"""The `kap` command as a user runs it: version, plugins, settings errors, `kap db`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kap.platform import __version__

KAP = str(Path(sys.executable).parent / "kap")


def kap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAP, *args], env=env, capture_output=True, text=True, timeout=300)


def test_version(kap_env: dict[str, str]) -> None:
    result = kap(kap_env, "version")
    assert result.returncode == 0 and result.stdout.strip() == __version__


def test_members_add_their_commands_through_entry_points(kap_env: dict[str, str]) -> None:
    result = kap(kap_env, "--help")
    for group in ("services", "db", "worker", "version", "queue", "graph"):
        assert group in result.stdout, group


def test_a_bad_setting_is_named_without_a_traceback(kap_env: dict[str, str]) -> None:
    result = kap({**kap_env, "KAP_REDIS_PORT": "many"}, "services", "status")
    assert result.returncode != 0
    assert "redis_port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_db_commands_migrate_an_empty_database(
    kap_env: dict[str, str], empty_database: str
) -> None:
    from alembic.script import ScriptDirectory

    from kap.platform.db import migrate

    head = ScriptDirectory.from_config(migrate.alembic_config(empty_database)).get_current_head()
    env = {**kap_env, "KAP_DATABASE_URL": empty_database}
    assert kap(env, "db", "current").stdout.strip() == "base"
    upgraded = kap(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"revision {head}" in upgraded.stderr
    assert kap(env, "db", "current").stdout.strip() == head
    assert kap(env, "db", "check").returncode == 0
    assert kap(env, "db", "upgrade").returncode == 0  # twice is fine
    assert kap(env, "db", "downgrade", "base").returncode == 0
    assert kap(env, "db", "current").stdout.strip() == "base"


@pytest.mark.integration
def test_db_upgrade_against_an_unreachable_server_fails_clearly(kap_env: dict[str, str]) -> None:
    env = {**kap_env, "KAP_DATABASE_URL": "postgresql+psycopg://kap:x@127.0.0.1:9/kap"}
    result = kap(env, "db", "upgrade")
    assert result.returncode != 0
    assert "127.0.0.1" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("override", "args", "message"),
    [
        ({"KAP_NEO4J_URI": "bolt://127.0.0.1:9", "KAP_NEO4J_PASSWORD": "x"},
         ("graph", "schema"), "cannot reach Neo4j at bolt://127.0.0.1:9"),
        ({"KAP_BROKER_URL": "redis://127.0.0.1:9/0"},
         ("queue", "ping", "--timeout", "5"), "cannot reach the broker"),
    ],
)  # fmt: skip
def test_an_unreachable_store_is_one_clear_line(
    kap_env: dict[str, str], override: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = kap({**kap_env, **override}, *args)
    assert result.returncode == 1
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
