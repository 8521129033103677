"""followup: customer_locks, so replicas sharing a stitched customer take turns on it (see shared/customer_locks.py).

Revision ID: followup_0005
Revises: followup_0004
"""
from alembic import op

from shared.customer_locks import create_customer_locks_table

revision = "followup_0005"
down_revision = "followup_0004"


def upgrade() -> None:
    create_customer_locks_table(op)


def downgrade() -> None:
    op.drop_table("customer_locks")
