"""Fixtures for tests that talk to the real Neo4j."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import neo4j
import pytest

from kap.graphstore.connection import connect
from kap.graphstore.schema import ensure_schema
from kap.platform.settings import Settings


@pytest.fixture(scope="module")
def driver(services: Settings) -> Iterator[neo4j.Driver]:
    """A driver to the test Neo4j, with the KAG schema in place."""
    with connect(services) as drv:
        ensure_schema(drv)
        yield drv


@pytest.fixture
def domain(driver: neo4j.Driver) -> Iterator[str]:
    """A domain name private to one test; its nodes are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=name)


@pytest.fixture(scope="module")
def graph(services: Settings) -> Iterator[tuple[neo4j.Driver, str]]:
    """The small test corpus (`test_ingest.CORPUS`) ingested into a private domain, per module."""
    from kap.graphstore.ingest import Ingestor
    from tests.integration.test_ingest import CORPUS

    domain = f"test-corpus-{uuid.uuid4().hex[:8]}"
    with connect(services) as driver:
        ensure_schema(driver)
        Ingestor(driver, domain).run(CORPUS)
        yield driver, domain
        driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)
