"""replicas: each replica's clock offset from the database's, for `postroom status`

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 23:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("replicas", sa.Column("clock_offset_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("replicas", "clock_offset_ms")
