"""campaign items: the self-play ledger, one row per task slot, written before enqueueing

The reconciler finds items stuck in `queued` by `updated_at` and re-enqueues them up to a cap
(`attempts`); `kap campaign status` counts them by `status`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 16:46:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ITEM_STATUSES = ("pending", "queued", "done", "rejected", "failed", "cancelled")


def upgrade() -> None:
    allowed = ", ".join(f"'{v}'" for v in ITEM_STATUSES)
    op.create_table(
        "campaign_items",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_items")),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_items_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_campaign_items_task_id_tasks"),
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint(
            "campaign_id", "position", name=op.f("uq_campaign_items_campaign_id_position")
        ),
        sa.CheckConstraint("position >= 0", name=op.f("ck_campaign_items_position_nonnegative")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_campaign_items_attempts_nonnegative")),
        sa.CheckConstraint(f"status IN ({allowed})", name=op.f("ck_campaign_items_status")),
    )
    op.create_index(
        op.f("ix_campaign_items_status_updated_at"), "campaign_items", ["status", "updated_at"]
    )
    op.create_index(op.f("ix_campaign_items_task_id"), "campaign_items", ["task_id"])


def downgrade() -> None:
    op.drop_table("campaign_items")
