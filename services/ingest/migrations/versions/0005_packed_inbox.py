"""ingest: packed_inbox, the inbox in the layout of services/ingest/inbox.py (event bodies written
on the request path). A new table, not a new layout in `inbox`: a replica of the earlier release,
still running beside new ones during an upgrade, reads only `inbox`, whose rows it can read; new
replicas apply what is left there first.

Revision ID: ingest_0005
Revises: ingest_0004
"""
import sqlalchemy as sa
from alembic import op

from shared.store import BigId, UTCDateTime

revision = "ingest_0005"
down_revision = "ingest_0004"


def upgrade() -> None:
    op.create_table(
        "packed_inbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("messages", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("packed_inbox")
