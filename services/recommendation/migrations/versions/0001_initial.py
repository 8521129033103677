"""recommendation: facts, countries, changes, model_state, links, erasures, the bus tables and customer_locks.

Revision ID: recommendation_0001
"""
import sqlalchemy as sa
from alembic import op

from shared.customer_locks import create_customer_locks_table
from shared.store import UTCDateTime, create_bus_tables, create_periodic_runs_table, drop_bus_tables

revision = "recommendation_0001"
down_revision = None

TABLES = ("facts", "countries", "changes", "model_state", "links", "erasures", "periodic_runs", "customer_locks")


def upgrade() -> None:
    create_bus_tables(op)
    create_periodic_runs_table(op)
    create_customer_locks_table(op)
    op.create_table(
        "facts",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.String(200), nullable=False, index=True),
        sa.Column("product_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("quantity", sa.Float, nullable=False),
        sa.Column("order_id", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "countries",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("country", sa.String(200), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "changes",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False, index=True),
    )
    op.create_table(
        "model_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "links",
        sa.Column("alias_id", sa.String(200), primary_key=True),
        sa.Column("customer_id", sa.String(200), nullable=False, index=True),
    )
    op.create_table(
        "erasures",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
    drop_bus_tables(op)
