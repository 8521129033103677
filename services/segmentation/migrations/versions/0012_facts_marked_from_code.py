"""segmentation: no more triggers marking whose facts changed; the code that writes marks (issue 13).

Migration 0009's triggers on profiles, customer_events and funnel_stages go, as memberships' did in
0011. Each writer of those tables calls `mark_facts_changed` (store.py) for the customers it wrote,
one statement for all of them, once per transaction; where a profile goes (erasure, merge)
`forget_facts` removes its mark and moves `fact_generation`. The profile trigger did a lookup of
the largest version and an upsert per row written, about twice the cost of marking them all at once
(every consumed batch writes each of its customers' profiles). tests/segmentation/test_fact_marks.py
checks that every writer marks.

Revision ID: segmentation_0012
Revises: segmentation_0011
"""
from alembic import op

revision = "segmentation_0012"
down_revision = "segmentation_0011"

SQLITE_TRIGGERS = ("fact_profiles_insert", "fact_profiles_update", "fact_profiles_rename", "fact_profiles_delete",
                   "fact_customer_events_update", "fact_customer_events_delete",
                   "fact_funnel_stages_insert", "fact_funnel_stages_update", "fact_funnel_stages_delete")
POSTGRESQL_TRIGGERS = ("profiles", "customer_events", "funnel_stages")
SQLITE_NEXT = "(SELECT coalesce(max(version), 0) + 1 FROM fact_changes)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        return
    for table in POSTGRESQL_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS fact_{table} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS fact_row_changed()")
    op.execute("DROP FUNCTION IF EXISTS fact_profile_changed()")
    op.execute("DROP FUNCTION IF EXISTS fact_touch(text, boolean)")


def downgrade() -> None:
    """The triggers as 0011 left them (customer_events: updates and deletes only, since 0010)."""
    if op.get_bind().dialect.name != "sqlite":
        _postgresql_triggers()
        return
    forget = ("DELETE FROM fact_changes WHERE customer_id = OLD.customer_id; "
              "UPDATE fact_generation SET generation = generation + 1;")

    def touch(row: str, guarded: bool) -> str:
        guard = f"WHERE EXISTS (SELECT 1 FROM profiles WHERE customer_id = {row}.customer_id)" if guarded else "WHERE true"
        return (f"INSERT INTO fact_changes (customer_id, version) SELECT {row}.customer_id, {SQLITE_NEXT} {guard} "
                "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version;")
    op.execute(f"CREATE TRIGGER fact_profiles_insert AFTER INSERT ON profiles BEGIN {touch('NEW', False)} END")
    op.execute(f"CREATE TRIGGER fact_profiles_update AFTER UPDATE ON profiles BEGIN {touch('NEW', False)} END")
    op.execute("CREATE TRIGGER fact_profiles_rename AFTER UPDATE OF customer_id ON profiles "
               f"WHEN OLD.customer_id <> NEW.customer_id BEGIN {forget} END")
    op.execute(f"CREATE TRIGGER fact_profiles_delete AFTER DELETE ON profiles BEGIN {forget} END")
    op.execute("CREATE TRIGGER fact_customer_events_update AFTER UPDATE ON customer_events BEGIN "
               f"{touch('OLD', True)} {touch('NEW', True)} END")
    op.execute(f"CREATE TRIGGER fact_customer_events_delete AFTER DELETE ON customer_events BEGIN {touch('OLD', True)} END")
    op.execute(f"CREATE TRIGGER fact_funnel_stages_insert AFTER INSERT ON funnel_stages BEGIN {touch('NEW', True)} END")
    op.execute("CREATE TRIGGER fact_funnel_stages_update AFTER UPDATE ON funnel_stages BEGIN "
               f"{touch('OLD', True)} {touch('NEW', True)} END")
    op.execute(f"CREATE TRIGGER fact_funnel_stages_delete AFTER DELETE ON funnel_stages BEGIN {touch('OLD', True)} END")


def _postgresql_triggers() -> None:
    op.execute("""
CREATE FUNCTION fact_touch(changed text, guarded boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF guarded AND NOT EXISTS (SELECT 1 FROM profiles WHERE customer_id = changed) THEN
    RETURN;
  END IF;
  INSERT INTO fact_changes (customer_id, version) VALUES (changed, pg_current_xact_id()::text::bigint)
  ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version;
END $$""")
    op.execute("""
CREATE FUNCTION fact_profile_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.customer_id <> NEW.customer_id) THEN
    DELETE FROM fact_changes WHERE customer_id = OLD.customer_id;
    UPDATE fact_generation SET generation = generation + 1;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM fact_touch(NEW.customer_id, false);
  END IF;
  RETURN NULL;
END $$""")
    op.execute("""
CREATE FUNCTION fact_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN
    PERFORM fact_touch(OLD.customer_id, true);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM fact_touch(NEW.customer_id, true);
  END IF;
  RETURN NULL;
END $$""")
    op.execute("CREATE TRIGGER fact_profiles AFTER INSERT OR UPDATE OR DELETE ON profiles "
               "FOR EACH ROW EXECUTE FUNCTION fact_profile_changed()")
    op.execute("CREATE TRIGGER fact_customer_events AFTER UPDATE OR DELETE ON customer_events "
               "FOR EACH ROW EXECUTE FUNCTION fact_row_changed()")
    op.execute("CREATE TRIGGER fact_funnel_stages AFTER INSERT OR UPDATE OR DELETE ON funnel_stages "
               "FOR EACH ROW EXECUTE FUNCTION fact_row_changed()")
