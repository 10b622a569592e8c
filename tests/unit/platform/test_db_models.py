"""Pure metadata checks of the trajectory store's models: no database needed.

What a migration cannot fix later without pain is checked here: every table exists, foreign
keys are indexed, idempotency keys are unique, delete rules are deliberate, and every
constraint and index has a deterministic name.
"""

from __future__ import annotations

import pytest
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    ForeignKeyConstraint,
    Index,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from kap.platform.db.models import NAMING_CONVENTION, Base

TABLES = {
    "campaigns",
    "campaign_items",
    "tasks",
    "trajectories",
    "steps",
    "verdicts",
    "datasets",
    "dataset_items",
    "training_runs",
    "run_metrics",
}
METADATA = Base.metadata
PG_MAX_IDENTIFIER = 63


def table(name: str) -> Table:
    return METADATA.tables[name]


def leading_column_sets(t: Table) -> list[tuple[str, ...]]:
    """Column lists of everything PostgreSQL backs with a b-tree index on this table."""
    out = [tuple(c.name for c in index.columns) for index in t.indexes]
    for constraint in t.constraints:
        if isinstance(constraint, PrimaryKeyConstraint | UniqueConstraint):
            out.append(tuple(c.name for c in constraint.columns))
    return out


def unique_column_sets(t: Table) -> set[tuple[str, ...]]:
    return {
        tuple(c.name for c in constraint.columns)
        for constraint in t.constraints
        if isinstance(constraint, UniqueConstraint)
    }


def test_every_table_is_defined() -> None:
    assert set(METADATA.tables) == TABLES


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_foreign_key_is_indexed(name: str) -> None:
    t = table(name)
    indexed = leading_column_sets(t)
    for fk in t.foreign_key_constraints:
        cols = tuple(c.name for c in fk.columns)
        covered = any(ix[: len(cols)] == cols for ix in indexed)
        assert covered, f"{name}.{cols} references {fk.referred_table.name} but has no index"


@pytest.mark.parametrize("name", ["tasks", "trajectories", "verdicts", "training_runs"])
def test_idempotency_key_is_unique(name: str) -> None:
    assert ("idempotency_key",) in unique_column_sets(table(name))


def test_idempotency_key_is_required_where_celery_writes() -> None:
    for name in ("tasks", "trajectories", "verdicts"):
        assert not table(name).c.idempotency_key.nullable, name
    # A run started by hand has no key; NULLs never collide in a PostgreSQL UNIQUE.
    assert table("training_runs").c.idempotency_key.nullable


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("trajectories", ("task_id", "sample_index")),
        ("steps", ("trajectory_id", "t")),
        ("datasets", ("name", "version")),
        ("dataset_items", ("dataset_id", "trajectory_id")),
        ("run_metrics", ("run_id", "name", "step")),
    ],
)
def test_natural_keys_are_unique(name: str, columns: tuple[str, ...]) -> None:
    assert columns in unique_column_sets(table(name))


def test_dataset_items_are_keyed_by_position() -> None:
    pk = table("dataset_items").primary_key
    assert tuple(c.name for c in pk.columns) == ("dataset_id", "position")


@pytest.mark.parametrize(
    ("name", "column", "rule"),
    [
        ("tasks", "campaign_id", "CASCADE"),
        ("trajectories", "task_id", "CASCADE"),
        ("trajectories", "campaign_id", "CASCADE"),
        ("steps", "trajectory_id", "CASCADE"),
        ("verdicts", "trajectory_id", "CASCADE"),
        ("dataset_items", "dataset_id", "CASCADE"),
        ("dataset_items", "trajectory_id", "RESTRICT"),
        ("training_runs", "dataset_id", "RESTRICT"),
        ("run_metrics", "run_id", "CASCADE"),
    ],
)
def test_delete_rules_are_explicit(name: str, column: str, rule: str) -> None:
    (fk,) = table(name).c[column].foreign_keys
    assert fk.ondelete == rule


def test_every_foreign_key_has_a_delete_rule() -> None:
    for t in METADATA.sorted_tables:
        for fk in t.foreign_key_constraints:
            assert fk.ondelete in {"CASCADE", "RESTRICT", "SET NULL"}, (t.name, fk.name)


def schema_items() -> list[tuple[str, str, str | None]]:
    """(convention key, table, name) for every constraint and index in the metadata."""
    kinds: list[tuple[type[object], str]] = [
        (PrimaryKeyConstraint, "pk"),
        (ForeignKeyConstraint, "fk"),
        (UniqueConstraint, "uq"),
        (CheckConstraint, "ck"),
    ]
    items: list[tuple[str, str, str | None]] = []
    for t in METADATA.sorted_tables:
        for constraint in t.constraints:
            key = next(k for cls, k in kinds if isinstance(constraint, cls))
            # An unnamed constraint carries a sentinel, not a str: report it as None.
            name = constraint.name if isinstance(constraint.name, str) else None
            items.append((key, t.name, name))
        items.extend(("ix", t.name, index.name) for index in t.indexes)
    return items


def test_naming_convention_covers_every_kind() -> None:
    assert set(NAMING_CONVENTION) == {"pk", "fk", "uq", "ix", "ck"}
    assert METADATA.naming_convention == NAMING_CONVENTION


def test_every_constraint_and_index_is_named_by_convention() -> None:
    items = schema_items()
    assert len(items) > 40  # guards against the helper silently finding nothing
    for key, table_name, name in items:
        assert name is not None, (key, table_name)
        assert name.startswith(f"{key}_{table_name}"), name
        assert len(name) <= PG_MAX_IDENTIFIER, name


def test_index_and_constraint_names_are_unique() -> None:
    # PostgreSQL wants index names (and so PK/UNIQUE names) unique per schema.
    names = [name for _, _, name in schema_items()]
    assert len(names) == len(set(names))


def enum_columns() -> list[tuple[Table, Column[object]]]:
    return [(t, c) for t in METADATA.sorted_tables for c in t.columns if isinstance(c.type, Enum)]


def test_status_columns_are_checked_varchars_of_enum_values() -> None:
    found = enum_columns()
    assert {(t.name, c.name) for t, c in found} == {
        ("campaigns", "status"),
        ("campaign_items", "status"),
        ("trajectories", "status"),
        ("steps", "role"),
        ("training_runs", "stage"),
        ("training_runs", "status"),
    }
    for t, c in found:
        enum = c.type
        assert isinstance(enum, Enum)
        assert not enum.native_enum and enum.create_constraint, c
        assert enum.enum_class is not None
        # The database holds the StrEnum's values ("pending"), never member names ("PENDING").
        assert enum.enums == [member.value for member in enum.enum_class]
        checks = {ck.name for ck in t.constraints if isinstance(ck, CheckConstraint)}
        assert f"ck_{t.name}_{c.name}" in checks


def test_timestamps_are_timezone_aware() -> None:
    for t in METADATA.sorted_tables:
        for c in t.columns:
            if isinstance(c.type, DateTime):
                assert c.type.timezone, f"{t.name}.{c.name}"


def test_created_at_has_a_server_default_where_present() -> None:
    tables_with_created_at = [t for t in METADATA.sorted_tables if "created_at" in t.c]
    assert len(tables_with_created_at) == len(TABLES) - 1  # all but dataset_items
    for t in tables_with_created_at:
        assert t.c.created_at.server_default is not None, t.name


def test_ddl_compiles_for_postgresql() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    for t in METADATA.sorted_tables:
        assert "CREATE TABLE" in str(CreateTable(t).compile(dialect=dialect))
        for index in t.indexes:
            assert isinstance(index, Index)
            assert "CREATE INDEX" in str(CreateIndex(index).compile(dialect=dialect))
