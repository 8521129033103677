"""segmentation: fewer writes per consumed event in customer_events and memberships (issue 13).

- customer_events loses its index on `at` alone: only the retention prune read it, and the prune
  now goes name by name through (name, at), the index behaviour conditions read anyway. Each event
  wrote one index entry fewer (about a quarter of its insert, with the pages its commit writes).
- memberships lose their per-row triggers marking the customer's facts changed (migration 0009):
  `apply` (evaluation.py) marks the customers whose memberships it changed, once each, and none
  that another write of the same transaction marked already (the consumed batch's profile writes:
  a mark holds for the whole transaction, as the insert into customer_events has relied on since
  0010). The trigger did three lookups and an upsert per membership row.

Revision ID: segmentation_0011
Revises: segmentation_0010
"""
from alembic import op

revision = "segmentation_0011"
down_revision = "segmentation_0010"

MEMBERSHIP_TRIGGERS = ("fact_memberships_insert", "fact_memberships_update", "fact_memberships_delete")
SQLITE_NEXT = "(SELECT coalesce(max(version), 0) + 1 FROM fact_changes)"


def upgrade() -> None:
    op.drop_index("ix_customer_events_at", "customer_events")
    if op.get_bind().dialect.name == "sqlite":
        for trigger in MEMBERSHIP_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    else:
        op.execute("DROP TRIGGER IF EXISTS fact_memberships ON memberships")


def downgrade() -> None:
    op.create_index("ix_customer_events_at", "customer_events", ["at"])
    if op.get_bind().dialect.name != "sqlite":
        op.execute("CREATE TRIGGER fact_memberships AFTER INSERT OR UPDATE OR DELETE ON memberships "
                   "FOR EACH ROW EXECUTE FUNCTION fact_row_changed()")
        return

    def touch(row: str) -> str:
        return (f"INSERT INTO fact_changes (customer_id, version) SELECT {row}.customer_id, {SQLITE_NEXT} "
                f"WHERE EXISTS (SELECT 1 FROM profiles WHERE customer_id = {row}.customer_id) "
                "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version;")
    op.execute(f"CREATE TRIGGER fact_memberships_insert AFTER INSERT ON memberships BEGIN {touch('NEW')} END")
    op.execute(f"CREATE TRIGGER fact_memberships_update AFTER UPDATE ON memberships BEGIN {touch('OLD')} {touch('NEW')} END")
    op.execute(f"CREATE TRIGGER fact_memberships_delete AFTER DELETE ON memberships BEGIN {touch('OLD')} END")
