"""ingest: erasure tombstones (keyed hashes of erased ids, and when), so late messages are dropped.

Revision ID: ingest_0003
Revises: ingest_0002
"""
import sqlalchemy as sa
from alembic import op

from shared.store import UTCDateTime

revision = "ingest_0003"
down_revision = "ingest_0002"


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasures")
