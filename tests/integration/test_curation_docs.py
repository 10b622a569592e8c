"""Every SQL block of docs/curation.md runs, as the read-only role, and returns rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from kap.platform.curation.datasets import create_dataset
from kap.platform.curation.query import run_query
from tests.integration.test_curation import seed

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "curation.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_cookbook_has_queries() -> None:
    assert len(QUERIES) >= 8


@pytest.mark.parametrize("sql", QUERIES, ids=[f"query{i}" for i in range(len(QUERIES))])
def test_each_cookbook_query_runs_and_finds_rows(
    sql: str, migrated_database: str, curator_url: str
) -> None:
    engine = sa.create_engine(migrated_database, poolclass=sa.NullPool)
    curator = sa.create_engine(curator_url, poolclass=sa.NullPool)
    try:
        ids = seed(engine, 6)
        # What the seed lacks for some recipes: a second tool, a failed call, more components,
        # a second sample of a task, and a run that trained on a dataset.
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE steps SET tool = 'visit', checks = checks || '{\"error\": true}' "
                        "WHERE trajectory_id = :i AND t = 1"), {"i": ids[0]},
            )  # fmt: skip
            conn.execute(
                sa.text("UPDATE verdicts SET components = components || "
                        "'{\"exact_match\": 1.0, \"f1\": 0.8}'")
            )  # fmt: skip
            conn.execute(
                sa.text("UPDATE trajectories SET task_id = (SELECT task_id FROM trajectories "
                        "WHERE id = :a), sample_index = 1 WHERE id = :b"),
                {"a": ids[0], "b": ids[1]},
            )  # fmt: skip
        dataset = create_dataset(engine, curator, "docs", "SELECT trajectory_id FROM "
                                 "curation.trajectory_summary")  # fmt: skip
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO training_runs (name, stage, dataset_id, dataset_hash, "
                        "base_model) VALUES ('sft', 'sft', :d, :h, 'tiny')"),
                {"d": dataset.id, "h": dataset.content_hash},
            )  # fmt: skip
        result = run_query(curator, sql)
        assert result.rows, f"no rows from:\n{sql}"
    finally:
        engine.dispose()
        curator.dispose()
