"""funnel: alerts, alert_firings and alert_deliveries (docs/api.md section 9).

Revision ID: funnel_0007
Revises: funnel_0006
"""
import sqlalchemy as sa
from alembic import op

from shared.store import UTCDateTime
from shared.webhooks import delivery_columns

revision = "funnel_0007"
down_revision = "funnel_0006"


def upgrade() -> None:
    op.create_table("alerts", sa.Column("key", sa.String(100), nullable=False), sa.Column("definition", sa.Text(), nullable=False),
                    sa.Column("created_at", UTCDateTime(), nullable=False), sa.PrimaryKeyConstraint("key", name=op.f("pk_alerts")))
    op.create_table("alert_firings", sa.Column("alert", sa.String(100), nullable=False),
                    sa.Column("period_start", UTCDateTime(), nullable=False), sa.Column("body", sa.Text(), nullable=False),
                    sa.Column("fired_at", UTCDateTime(), nullable=False),
                    sa.PrimaryKeyConstraint("alert", "period_start", name=op.f("pk_alert_firings")))
    op.create_table("alert_deliveries", *delivery_columns(), sa.Column("alert", sa.String(100), nullable=False))
    op.create_index(op.f("ix_alert_deliveries_alert"), "alert_deliveries", ["alert"], unique=False)


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    op.drop_table("alert_firings")
    op.drop_table("alerts")
