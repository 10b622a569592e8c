"""campaign items: index by (campaign, status, updated_at), the shape of every ledger query

Claiming due items, finishing one (which counts the campaign's open items) and the status
command all filter one campaign's items by status; the (status, updated_at) index made each
of them scan every campaign's items of that status.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_campaign_items_status_updated_at"), table_name="campaign_items")
    op.create_index(
        op.f("ix_campaign_items_campaign_id_status_updated_at"),
        "campaign_items",
        ["campaign_id", "status", "updated_at"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_campaign_items_campaign_id_status_updated_at"), table_name="campaign_items"
    )
    op.create_index(
        op.f("ix_campaign_items_status_updated_at"), "campaign_items", ["status", "updated_at"]
    )
