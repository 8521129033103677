"""segmentation: custom segment definitions, customers' recent events, funnel stages.

Revision ID: segmentation_0004
Revises: segmentation_0003
"""
import sqlalchemy as sa
from alembic import op

from shared.store import UTCDateTime

revision = "segmentation_0004"
down_revision = "segmentation_0003"


def upgrade() -> None:
    op.create_table(
        "segment_definitions",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_segment_definitions")),
    )
    op.create_table(
        "customer_events",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("properties", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_customer_events")),
    )
    op.create_index("ix_customer_events_at", "customer_events", ["at"])
    op.create_index("ix_customer_events_customer_name_at", "customer_events", ["customer_id", "name", "at"])
    op.create_index("ix_customer_events_name_at", "customer_events", ["name", "at"])
    op.create_table(
        "funnel_stages",
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("funnel", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(100)),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("seq", sa.String(40)),
        sa.PrimaryKeyConstraint("customer_id", "funnel", name=op.f("pk_funnel_stages")),
    )


def downgrade() -> None:
    op.drop_table("funnel_stages")
    op.drop_table("customer_events")
    op.drop_table("segment_definitions")
