"""trajectory messages: the whole OpenAI-style conversation and its tool schemas

`trajectories.messages` keeps what the model saw, message for message (the export and the
trainers read it); `steps` keep it turn by turn for SQL. `tools` are the function schemas it
was shown. Both default to an empty JSON list, so existing rows stay valid.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 16:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for name in ("messages", "tools"):
        op.add_column(
            "trajectories",
            sa.Column(name, JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        )


def downgrade() -> None:
    for name in ("tools", "messages"):
        op.drop_column("trajectories", name)
