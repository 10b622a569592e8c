"""The exception tree of kap: one root, a subclass per subsystem; retries key off these types."""

from __future__ import annotations


class KapError(Exception):
    """Root of every error kap raises on purpose."""


class ConfigError(KapError):
    """Settings are missing or inconsistent."""


class ServiceError(KapError):
    """A local service could not be installed, started, reached or stopped."""


class DatabaseError(KapError):
    """PostgreSQL schema or migration problem."""


class TransientStoreError(KapError):
    """PostgreSQL or Neo4j is unreachable, restarting or lost the connection mid-write: worth
    retrying later (the writes are idempotent). Wraps the driver's exception as `__cause__`."""


class GraphStoreError(KapError):
    """Neo4j schema, query or ingestion problem."""


class QueueError(KapError):
    """Celery configuration problem."""


class LoaderError(GraphStoreError):
    """An input file cannot be ingested; the message names the file and the line or record."""


class LLMError(KapError):
    """An LLM endpoint refused a request or answered something unusable."""


class TransientLLMError(LLMError):
    """A timeout, connection failure, 429 or 5xx: worth retrying later."""


class SandboxError(KapError):
    """The sandbox for model-written code cannot be created; the code never runs unsandboxed."""


class CurationError(KapError):
    """A curation query was refused, or a dataset cannot be created, found, read or exported."""


class QueryRefused(CurationError):
    """User-written curation SQL was refused; the message says why (never ran, or was stopped)."""
