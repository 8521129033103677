"""funnel: matches indexed by (customer_id, funnel, at) instead of (funnel, customer_id): a
customer's latest match in a funnel is one index lookup however many they have (every batch
reads it per funnel and customer), and a merge or an erasure finds a customer's matches without
reading the whole table.

Revision ID: funnel_0008
Revises: funnel_0007
"""
from alembic import op

revision = "funnel_0008"
down_revision = "funnel_0007"


def upgrade() -> None:
    op.create_index("ix_matches_customer_funnel_at", "matches", ["customer_id", "funnel", "at"], unique=False)
    op.drop_index("ix_matches_funnel_customer", table_name="matches")


def downgrade() -> None:
    op.create_index("ix_matches_funnel_customer", "matches", ["funnel", "customer_id"], unique=False)
    op.drop_index("ix_matches_customer_funnel_at", table_name="matches")
