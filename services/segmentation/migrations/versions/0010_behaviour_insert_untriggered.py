"""segmentation: a behaviour event's insert no longer marks its customer's facts changed by itself.

The only writer that inserts into customer_events is `record_interactions` (recording.py), and it
writes the profile of every customer it inserts events for in the same transaction, whose trigger
marks the customer already. The per-row trigger on the insert did that same mark again for each
event (three lookups and an upsert per row: about a tenth of segmentation's CPU per event in the
end-to-end bench, issue 13). Updates and deletes of customer_events (merges, retention, erasure)
keep their trigger: they happen without a profile write.

Revision ID: segmentation_0010
Revises: segmentation_0009
"""
from alembic import op

revision = "segmentation_0010"
down_revision = "segmentation_0009"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS fact_customer_events_insert")
        return
    op.execute("DROP TRIGGER IF EXISTS fact_customer_events ON customer_events")
    op.execute("CREATE TRIGGER fact_customer_events AFTER UPDATE OR DELETE ON customer_events "
               "FOR EACH ROW EXECUTE FUNCTION fact_row_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER fact_customer_events_insert AFTER INSERT ON customer_events BEGIN "
                   "INSERT INTO fact_changes (customer_id, version) SELECT NEW.customer_id, "
                   "(SELECT coalesce(max(version), 0) + 1 FROM fact_changes) "
                   "WHERE EXISTS (SELECT 1 FROM profiles WHERE customer_id = NEW.customer_id) "
                   "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version; END")
        return
    op.execute("DROP TRIGGER IF EXISTS fact_customer_events ON customer_events")
    op.execute("CREATE TRIGGER fact_customer_events AFTER INSERT OR UPDATE OR DELETE ON customer_events "
               "FOR EACH ROW EXECUTE FUNCTION fact_row_changed()")
