"""watch leases: one replica watches each mailbox folder

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 19:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watch_leases",
        sa.Column("watch", sa.String(length=1300), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("watch"),
    )


def downgrade() -> None:
    op.drop_table("watch_leases")
