"""followup: periodic_runs, so each periodic job runs once per interval across replicas.

Revision ID: followup_0004
Revises: followup_0003
"""
from alembic import op

from shared.store import create_periodic_runs_table

revision = "followup_0004"
down_revision = "followup_0003"


def upgrade() -> None:
    create_periodic_runs_table(op)


def downgrade() -> None:
    op.drop_table("periodic_runs")
