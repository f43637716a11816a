"""forget_tombstones: keyed hashes of a forgotten user's identifiers, so late work is dropped

Revision ID: 0004
Revises: 0003

A forget deletes everything of the user, but work already in flight (a job claimed before the
forget), a redelivered post-call webhook or a late first delivery could write the forgotten
call back. The tombstone records, per tenant, HMAC-SHA256 lookup hashes (never plaintext) of
the user id, external id, caller numbers, conversation ids and call SIDs, with the time of the
forget and an expiry (``VOXMEM_FORGET_TOMBSTONE_DAYS``). Plain DDL: same on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "forget_tombstones",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "key_hash", name="uq_tombstone_tenant_hash"),
    )
    op.create_index("idx_tombstone_expires", "forget_tombstones", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("idx_tombstone_expires", table_name="forget_tombstones")
    op.drop_table("forget_tombstones")
