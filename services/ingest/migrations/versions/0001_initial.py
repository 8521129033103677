"""ingest: processed messages and outbox.

Revision ID: ingest_0001
"""
from alembic import op

from shared.store import create_bus_tables, drop_bus_tables

revision = "ingest_0001"
down_revision = None


def upgrade() -> None:
    create_bus_tables(op)


def downgrade() -> None:
    drop_bus_tables(op)
