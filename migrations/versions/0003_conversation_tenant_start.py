"""conversations (tenant_id, start_time) index for tenant-wide analytics windows

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "idx_conversation_tenant_start", "conversations", ["tenant_id", "start_time"], unique=False
    )


def downgrade() -> None:
    op.drop_index("idx_conversation_tenant_start", table_name="conversations")
