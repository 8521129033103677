"""segmentation: periodic_runs, so each periodic job runs once per interval across replicas.

Revision ID: segmentation_0006
Revises: segmentation_0005
"""
from alembic import op

from shared.store import create_periodic_runs_table

revision = "segmentation_0006"
down_revision = "segmentation_0005"


def upgrade() -> None:
    create_periodic_runs_table(op)


def downgrade() -> None:
    op.drop_table("periodic_runs")
