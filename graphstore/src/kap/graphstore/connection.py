"""The Neo4j driver for kap, built from the settings at an entry point."""

from __future__ import annotations

import neo4j

from kap.platform.settings import Settings


def connect(settings: Settings) -> neo4j.Driver:
    """A driver for the configured (or local) Neo4j; close it, or use it as a context manager."""
    return neo4j.GraphDatabase.driver(
        settings.resolved_neo4j_uri(),
        auth=(settings.neo4j_user, settings.resolved_neo4j_password()),
        connection_timeout=10,
        max_transaction_retry_time=30,
        # Server notifications (e.g. "property `coverage` does not exist yet" before the first
        # campaign writes it) are advice for query authors, not for users' terminals.
        notifications_min_severity="OFF",
    )
