"""Shared fixtures: test settings and the real local services they point at.

Tests use their own state directory (`.kap-test/` at the repository root unless KAP_HOME is
set) and their own ports, so they never touch the demo's data. `make test` brings the services
up before pytest runs; when run alone, the `services` fixture brings up whatever is missing.
Under CI=true a service that cannot be started is a failure, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kap.platform.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# Test defaults, used only where the environment does not say otherwise.
TEST_ENV = {
    "KAP_HOME": str(REPO_ROOT / ".kap-test"),
    "KAP_NEO4J_PORT": "7698",
    "KAP_POSTGRES_PORT": "55433",
    "KAP_REDIS_PORT": "6390",
}


def kap_test_env() -> dict[str, str]:
    """The environment a subprocess under test needs to reach the test services."""
    env = dict(os.environ)
    for key, value in TEST_ENV.items():
        env.setdefault(key, value)
    return env


@pytest.fixture(scope="session")
def kap_env() -> dict[str, str]:
    return kap_test_env()


@pytest.fixture(scope="session")
def kap_settings(kap_env: dict[str, str]) -> Settings:
    overrides = {k: v for k, v in kap_env.items() if k.startswith("KAP_")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in overrides.items():
            mp.setenv(key, value)
        return Settings()


@pytest.fixture(scope="session")
def services(kap_settings: Settings) -> Settings:
    """Ensure the local services the settings point at are running (idempotent)."""
    from kap.platform.services.manager import ServiceManager

    ServiceManager(kap_settings).up()
    return kap_settings


@pytest.fixture(scope="session")
def database_url(kap_settings: Settings) -> str:
    from kap.platform.services.manager import ServiceManager

    ServiceManager(kap_settings).up(["postgres"])
    return kap_settings.resolved_database_url()


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A freshly created, empty PostgreSQL database; dropped afterwards."""
    from kap.platform.db.scratch import scratch_database

    with scratch_database(database_url, prefix="kap_test") as url:
        yield url


@pytest.fixture
def migrated_database(empty_database: str) -> str:
    """A fresh database with every Alembic migration applied."""
    from kap.platform.db import migrate

    migrate.upgrade(empty_database)
    return empty_database


@pytest.fixture
def curator_url(kap_settings: Settings, migrated_database: str) -> str:
    """The read-only role's URL for `migrated_database`."""
    from tests.support.stores import curator_url

    return curator_url(kap_settings, migrated_database)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect `gpu` tests where CUDA is absent (reported in the summary, never a silent skip);
    run them with the device tool on a lent GPU."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
