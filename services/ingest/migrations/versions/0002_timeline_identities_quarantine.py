"""ingest: inbox, events (timelines), seen message ids, identity links, quarantine.

Revision ID: ingest_0002
Revises: ingest_0001
"""
import sqlalchemy as sa
from alembic import op

from shared.store import BigId, UTCDateTime

revision = "ingest_0002"
down_revision = "ingest_0001"


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("messages", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_events_customer_timeline", "events", ["customer_id", "occurred_at", "event_id"])
    op.create_table(
        "seen_messages",
        sa.Column("message_id", sa.String(200), primary_key=True),
        sa.Column("seen_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_seen_messages_seen_at", "seen_messages", ["seen_at"])
    op.create_table(
        "identities",
        sa.Column("alias_id", sa.String(200), primary_key=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("linked_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_identities_customer_id", "identities", ["customer_id"])
    op.create_table(
        "quarantine",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(200)),
        sa.Column("user_id", sa.String(200)),
        sa.Column("anonymous_id", sa.String(200)),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_quarantine_user_id", "quarantine", ["user_id"])
    op.create_index("ix_quarantine_anonymous_id", "quarantine", ["anonymous_id"])


def downgrade() -> None:
    for table in ("quarantine", "identities", "seen_messages", "events", "inbox"):
        op.drop_table(table)
