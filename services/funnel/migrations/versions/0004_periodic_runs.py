"""funnel: periodic_runs, so each periodic job runs once per interval across replicas.

Revision ID: funnel_0004
Revises: funnel_0003
"""
from alembic import op

from shared.store import create_periodic_runs_table

revision = "funnel_0004"
down_revision = "funnel_0003"


def upgrade() -> None:
    create_periodic_runs_table(op)


def downgrade() -> None:
    op.drop_table("periodic_runs")
