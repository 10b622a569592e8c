"""curation: the read-only role kap_curator, the curation views, frozen datasets made immutable

`datasets.idempotency_key` lets a redelivered Celery task find the dataset it already made.

User-written curation SQL (`kap dataset query`, the explorer's editor) runs as the LOGIN role
`kap_curator`, never as the owner: it may SELECT the self-play, curation and training tables
and the views of schema `curation`, and nothing else. It creates nothing (PostgreSQL 15+ gives
PUBLIC no CREATE on schema public; the `curation` schema grants only USAGE) and gets no
temporary tables (TEMP is revoked from PUBLIC on this database and granted back to the role
running the migration). The role is cluster-wide, so it is created only when missing and
dropped on downgrade only when no other database still grants it anything. It has no password
here: `kap db upgrade` sets the local cluster's from the state directory; on a server of your
own, set one and give kap `KAP_CURATOR_URL`. A later migration that adds a table curators
should read grants SELECT on it itself; one that changes a column a view reads drops and
recreates that view around the change (PostgreSQL refuses to drop a column under a view).

Frozen datasets are immutable in the database, not only in Python: triggers refuse any change
to a frozen `datasets` row or its `dataset_items`, any TRUNCATE while one exists, and any change
to the messages, tools or steps of a trajectory a frozen dataset holds (deleting one is already
refused by the RESTRICT foreign key).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "kap_curator"
READABLE = (
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
)

VIEWS = {
    # One row per trajectory, with its newest verdict (reverify adds rows; the newest wins).
    "trajectory_summary": """
        SELECT tr.id AS trajectory_id, tr.campaign_id, c.name AS campaign, t.domain,
               tr.task_id, t.kind, t.question, t.gold_answer, tr.final_answer, tr.status,
               tr.model, tr.sample_index, tr.n_turns, tr.n_tokens,
               COALESCE(u.tools_used, '{}') AS tools_used, COALESCE(u.n_tool_calls, 0)
                   AS n_tool_calls,
               v.correct, v.reward, v.components, v.verifier, v.verifier_version,
               tr.created_at, tr.finished_at
        FROM trajectories tr
        JOIN tasks t ON t.id = tr.task_id
        JOIN campaigns c ON c.id = tr.campaign_id
        LEFT JOIN LATERAL (
            SELECT array_agg(DISTINCT s.tool ORDER BY s.tool) AS tools_used,
                   count(*) AS n_tool_calls
            FROM steps s WHERE s.trajectory_id = tr.id AND s.tool IS NOT NULL
        ) u ON true
        LEFT JOIN LATERAL (
            SELECT correct, reward, components, verifier, verifier_version
            FROM verdicts WHERE trajectory_id = tr.id ORDER BY created_at DESC, id DESC LIMIT 1
        ) v ON true
    """,
    "steps": """
        SELECT s.trajectory_id, tr.campaign_id, t.domain, s.t, s.role, s.content, s.tool,
               s.args, s.observation, s.tokens, s.latency_ms, s.checks
        FROM steps s
        JOIN trajectories tr ON tr.id = s.trajectory_id
        JOIN tasks t ON t.id = tr.task_id
    """,
    "tool_usage": """
        SELECT tr.campaign_id, t.domain, s.tool, count(*) AS calls,
               count(DISTINCT s.trajectory_id) AS trajectories,
               avg(s.tokens)::double precision AS mean_tokens,
               avg(s.latency_ms)::double precision AS mean_latency_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY s.latency_ms) AS p95_latency_ms
        FROM steps s
        JOIN trajectories tr ON tr.id = s.trajectory_id
        JOIN tasks t ON t.id = tr.task_id
        WHERE s.tool IS NOT NULL
        GROUP BY tr.campaign_id, t.domain, s.tool
    """,
    # One row per task and criterion: why a proposal was accepted or rejected.
    "task_criteria": """
        SELECT t.id AS task_id, t.campaign_id, t.domain, t.kind, t.accepted, c.key AS criterion,
               (c.value ->> 'passed')::boolean AS passed, c.value ->> 'reason' AS reason
        FROM tasks t, jsonb_each(t.criteria) AS c
    """,
}

GUARD = """
CREATE FUNCTION curation.refuse_frozen_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    held record;
    touched uuid;
    target uuid;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM datasets WHERE frozen) THEN
            RAISE EXCEPTION 'cannot truncate %: frozen datasets never change', TG_TABLE_NAME
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'datasets' THEN
        IF OLD.frozen THEN
            RAISE EXCEPTION 'dataset %@% is frozen: it never changes (create a new version)',
                OLD.name, OLD.version USING ERRCODE = 'restrict_violation';
        END IF;
    ELSIF TG_TABLE_NAME = 'dataset_items' THEN
        IF TG_OP <> 'INSERT' THEN
            touched := OLD.dataset_id;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            target := NEW.dataset_id;
        END IF;
        SELECT name, version INTO held FROM datasets WHERE frozen AND id IN (touched, target);
        IF FOUND THEN
            RAISE EXCEPTION 'dataset %@% is frozen: its items never change', held.name,
                held.version USING ERRCODE = 'restrict_violation';
        END IF;
    ELSE  -- trajectories (messages, tools) and steps
        IF TG_TABLE_NAME = 'steps' THEN
            touched := OLD.trajectory_id;
        ELSE
            touched := OLD.id;
        END IF;
        SELECT d.name, d.version INTO held FROM dataset_items i
        JOIN datasets d ON d.id = i.dataset_id
        WHERE d.frozen AND i.trajectory_id = touched
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'trajectory % is in frozen dataset %@%: its record never changes',
                touched, held.name, held.version USING ERRCODE = 'restrict_violation';
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$
"""

TRIGGERS = {
    "datasets_frozen": "BEFORE UPDATE OR DELETE ON datasets FOR EACH ROW",
    "datasets_frozen_truncate": "BEFORE TRUNCATE ON datasets FOR EACH STATEMENT",
    "dataset_items_frozen": "BEFORE INSERT OR UPDATE OR DELETE ON dataset_items FOR EACH ROW",
    "dataset_items_frozen_truncate": "BEFORE TRUNCATE ON dataset_items FOR EACH STATEMENT",
    "trajectories_frozen": "BEFORE UPDATE OF messages, tools ON trajectories FOR EACH ROW",
    "steps_frozen": "BEFORE UPDATE OR DELETE ON steps FOR EACH ROW",
}


def upgrade() -> None:
    op.add_column("datasets", sa.Column("idempotency_key", sa.Text(), nullable=True))
    op.create_unique_constraint(
        op.f("uq_datasets_idempotency_key"), "datasets", ["idempotency_key"]
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
                NOREPLICATION NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object THEN NULL;  -- another database of the cluster made it
        END $$
        """
    )
    op.execute("CREATE SCHEMA curation")
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW curation.{name} AS {body}")
    op.execute(GUARD)
    for name, when in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION curation.refuse_frozen_change()")

    # No temporary tables for anyone but the role that owns the schema (and superusers).
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
            EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(),
                           current_user);
        END $$
        """
    )
    op.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA curation TO {ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA curation TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(READABLE)} TO {ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE SELECT ON {', '.join(READABLE)} FROM {ROLE}")
    for name, when in TRIGGERS.items():
        table = when.split(" ON ")[1].split()[0]
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP SCHEMA curation CASCADE")  # views, the guard function, their grants
    op.drop_constraint(op.f("uq_datasets_idempotency_key"), "datasets", type_="unique")
    op.drop_column("datasets", "idempotency_key")
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database());
        END $$
        """
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format('REVOKE ALL ON DATABASE %I FROM {ROLE}', current_database());
            DROP ROLE {ROLE};
        EXCEPTION WHEN dependent_objects_still_exist THEN NULL;  -- another database uses it
        END $$
        """
    )
