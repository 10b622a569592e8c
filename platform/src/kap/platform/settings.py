"""The one settings object of kap, read from `KAP_*` environment variables at entry points.

Build it once where a program starts (`kap` commands, the Celery worker, Alembic's env.py,
test fixtures) and pass it down; library code takes values, never reads the environment.

The local services keep their generated passwords in the state directory (`KAP_HOME`,
`.kap/` by default); when no URL is given explicitly, the connection facts are derived from
the state directory and the configured ports, so `kap services up` and every client agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kap.platform.errors import ConfigError

LOOPBACK = "127.0.0.1"
CURATOR_ROLE = "kap_curator"  # created by migration 0006
CURATOR_SECRET = "postgres-curator"


def curator_url_for(database_url: str, password: str) -> str:
    """The URL of `database_url`'s database and server, logged in as the read-only role."""
    from sqlalchemy import make_url  # lazy: settings are read by every command

    url = make_url(database_url).set(username=CURATOR_ROLE, password=password)
    return url.render_as_string(hide_password=False)


class Settings(BaseSettings):
    """Everything kap reads from the environment. Every field is `KAP_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="KAP_", extra="ignore", frozen=True)

    home: Annotated[Path, Field(description="State directory: data, logs, passwords.")] = Path(
        ".kap"
    )
    neo4j_port: Annotated[int, Field(ge=1, le=65535, description="Local Neo4j Bolt port.")] = 7697
    postgres_port: Annotated[int, Field(ge=1, le=65535, description="Local PostgreSQL port.")] = (
        55432
    )
    redis_port: Annotated[int, Field(ge=1, le=65535, description="Local Redis port.")] = 6389

    neo4j_uri: Annotated[
        str | None, Field(description="Existing Neo4j server; the local one when unset.")
    ] = None
    neo4j_user: str = "neo4j"
    neo4j_password: Annotated[
        str | None, Field(description="Password for neo4j_uri; read from the state dir if unset.")
    ] = None
    neo4j_database: str = "neo4j"
    neo4j_heap: Annotated[str, Field(description="JVM heap of the local Neo4j.")] = "1g"
    neo4j_pagecache: Annotated[str, Field(description="Page cache of the local Neo4j.")] = "512m"

    database_url: Annotated[
        str | None,
        Field(description="Existing PostgreSQL (SQLAlchemy URL); the local cluster when unset."),
    ] = None
    curator_url: Annotated[
        str | None,
        Field(
            description="URL of the read-only role `kap_curator` for curation SQL and the UI; "
            "on the local cluster derived from the state dir."
        ),
    ] = None
    broker_url: Annotated[
        str | None, Field(description="Existing Redis broker for Celery; the local one when unset.")
    ] = None

    service_timeout: Annotated[
        float, Field(gt=0, description="Seconds to wait for a service to become healthy.")
    ] = 120.0
    task_time_limit: Annotated[
        int, Field(gt=0, description="Hard time limit (s) of any Celery task unless it sets one.")
    ] = 3600
    visibility_timeout: Annotated[
        int, Field(gt=0, description="Redis visibility timeout (s); must exceed every time limit.")
    ] = 7200

    extractor_url: Annotated[
        str | None,
        Field(description="OpenAI-compatible endpoint (…/v1) for LLM fact extraction at ingest."),
    ] = None
    extractor_model: Annotated[
        str | None, Field(description="Model name the extractor endpoint serves.")
    ] = None
    extractor_api_key: Annotated[
        str | None, Field(description="Bearer token for the extractor endpoint, if it needs one.")
    ] = None

    migrations_dir: Annotated[
        Path | None, Field(description="Folder holding alembic.ini's script location.")
    ] = None

    @model_validator(mode="after")
    def _visibility_above_time_limit(self) -> Settings:
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"KAP_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must exceed "
                f"KAP_TASK_TIME_LIMIT ({self.task_time_limit}s): Redis redelivers a task that "
                "is unacknowledged for longer than the visibility timeout, even a running one"
            )
        return self

    # ---- derived paths ----

    @property
    def state_dir(self) -> Path:
        return self.home.expanduser().resolve()

    def service_dir(self, name: str) -> Path:
        return self.state_dir / name

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    def secret_path(self, name: str) -> Path:
        return self.state_dir / "secrets" / name

    def _secret(self, name: str) -> str:
        path = self.secret_path(name)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"no password at {path}: run `kap services up` first "
                f"(or set KAP_{name.upper()}_URL / KAP_NEO4J_PASSWORD for an existing server)"
            ) from None

    # ---- connection facts ----

    @property
    def extractor_configured(self) -> bool:
        if bool(self.extractor_url) != bool(self.extractor_model):
            raise ConfigError("set both KAP_EXTRACTOR_URL and KAP_EXTRACTOR_MODEL, or neither")
        return bool(self.extractor_url)

    @property
    def local_neo4j(self) -> bool:
        return self.neo4j_uri is None

    @property
    def local_postgres(self) -> bool:
        return self.database_url is None

    @property
    def local_redis(self) -> bool:
        return self.broker_url is None

    def resolved_neo4j_uri(self) -> str:
        return self.neo4j_uri or f"bolt://{LOOPBACK}:{self.neo4j_port}"

    def resolved_neo4j_password(self) -> str:
        if self.neo4j_password is not None:
            return self.neo4j_password
        return self._secret("neo4j")

    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        password = self._secret("postgres")
        return f"postgresql+psycopg://kap:{password}@{LOOPBACK}:{self.postgres_port}/kap"

    def resolved_curator_url(self) -> str:
        """The read-only role's URL: curation SQL and the explorer connect with it."""
        if self.curator_url is not None:
            return self.curator_url
        if self.database_url is not None:
            raise ConfigError(
                "KAP_DATABASE_URL names your own server: set KAP_CURATOR_URL to the read-only "
                "role `kap_curator` there too (the migrations create it; give it a password)"
            )
        path = self.secret_path(CURATOR_SECRET)
        if not path.exists():
            raise ConfigError(
                f"no password for the read-only role at {path}: run `kap db upgrade`, which "
                "sets it on the local cluster"
            )
        return curator_url_for(self.resolved_database_url(), path.read_text().strip())

    def resolved_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url
        password = self._secret("redis")
        return f"redis://:{password}@{LOOPBACK}:{self.redis_port}/0"
