"""segmentation: erasure tombstones (ids and time only).

Revision ID: segmentation_0003
Revises: segmentation_0002
"""
import sqlalchemy as sa
from alembic import op

from shared.store import UTCDateTime

revision = "segmentation_0003"
down_revision = "segmentation_0002"


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("customer_id", sa.String(200), primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasures")
