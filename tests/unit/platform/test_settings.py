"""Settings: the KAP_ prefix, derived connection facts, and refusals of inconsistent values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kap.platform.errors import ConfigError
from kap.platform.settings import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("KAP_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_reads_the_kap_prefix(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("KAP_HOME", str(tmp_path))
    clean_env.setenv("KAP_REDIS_PORT", "7001")
    clean_env.setenv("REDIS_PORT", "9")  # unprefixed variables are not ours
    settings = Settings()
    assert settings.state_dir == tmp_path.resolve()
    assert settings.redis_port == 7001


def test_local_urls_come_from_the_state_directory(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, postgres_port=5999, redis_port=6999, neo4j_port=7999)
    for name, secret in (("postgres", "pg-pw"), ("redis", "rd-pw"), ("neo4j", "nj-pw")):
        path = settings.secret_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n")
    assert settings.resolved_database_url() == ("postgresql+psycopg://kap:pg-pw@127.0.0.1:5999/kap")
    assert settings.resolved_broker_url() == "redis://:rd-pw@127.0.0.1:6999/0"
    assert settings.resolved_neo4j_uri() == "bolt://127.0.0.1:7999"
    assert settings.resolved_neo4j_password() == "nj-pw"


def test_existing_servers_win_over_the_local_ones(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:p@db.internal:5432/kap"
    settings = Settings(home=tmp_path, database_url=url, neo4j_uri="bolt://g:7687")
    assert settings.resolved_database_url() == url
    assert not settings.local_postgres and not settings.local_neo4j and settings.local_redis


def test_missing_password_names_the_file_and_the_fix(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(ConfigError, match=r"secrets/postgres.*kap services up"):
        settings.resolved_database_url()


def test_visibility_timeout_must_exceed_the_task_time_limit() -> None:
    with pytest.raises(ValidationError, match="KAP_VISIBILITY_TIMEOUT"):
        Settings(task_time_limit=600, visibility_timeout=600)


def test_bad_port_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KAP_NEO4J_PORT", "70000")
    with pytest.raises(ValidationError, match="neo4j_port"):
        Settings()


def test_the_test_services_never_share_state_or_ports_with_the_demo(
    kap_settings: Settings, clean_env: pytest.MonkeyPatch
) -> None:
    demo = Settings()  # what `make demo` uses: no KAP_* variables set
    assert kap_settings.state_dir != demo.state_dir
    test_ports = {kap_settings.neo4j_port, kap_settings.postgres_port, kap_settings.redis_port}
    demo_ports = {demo.neo4j_port, demo.postgres_port, demo.redis_port}
    assert len(test_ports) == 3 and not test_ports & demo_ports
