"""segmentation: customer_locks, so replicas sharing a stitched customer take turns on it (see shared/customer_locks.py).

Revision ID: segmentation_0007
Revises: segmentation_0006
"""
from alembic import op

from shared.customer_locks import create_customer_locks_table

revision = "segmentation_0007"
down_revision = "segmentation_0006"


def upgrade() -> None:
    create_customer_locks_table(op)


def downgrade() -> None:
    op.drop_table("customer_locks")
