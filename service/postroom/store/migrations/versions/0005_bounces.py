"""bounces: the ledger of consumed bounce reports and each account's suppression list

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounces",
        sa.Column("report_key", sa.String(length=1300), nullable=False),
        sa.Column("recipient", sa.String(length=512), nullable=False),
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("report_key", "recipient"),
    )
    op.create_index("ix_bounces_outbox", "bounces", ["outbox_id"])
    op.create_table(
        "suppressions",
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", "address"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("ix_bounces_outbox", table_name="bounces")
    op.drop_table("bounces")
