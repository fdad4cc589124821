"""Alembic environment: the engine comes from postroom (postroom.store.engine.migrate)."""

from alembic import context
from postroom.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` during development
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url") or "").connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite can only change tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
