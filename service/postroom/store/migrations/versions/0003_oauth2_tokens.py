"""oauth2 tokens: each OAuth2 account's refresh token (encrypted) and refresh state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth2_tokens",
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("sealed_refresh_token", sa.LargeBinary(), nullable=True),
        sa.Column("origin", sa.String(length=80), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account"),
    )


def downgrade() -> None:
    op.drop_table("oauth2_tokens")
