"""outbox.run_id: which job run made each outgoing message, so a run's outcome counts them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 23:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
    op.create_index("ix_outbox_run", "outbox", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_run", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("run_id")
