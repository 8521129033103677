"""segmentation: which customers' facts changed, for the in-memory facts of previews (facts_index.py).

Triggers on every table a rule reads (profiles, customer_events, memberships, funnel_stages) record
the customer whose rows changed, with a version that grows in commit order: on SQLite one more than
the largest (writers take turns), on PostgreSQL the writing transaction's id (a reader re-reads from
the oldest transaction running when it last read). A profile deleted or renamed (erasure, merge)
removes its row and moves `fact_generation`: readers reload everything, and no erased id stays.
A later migration that recreates one of these tables (SQLite batch mode) must create the triggers
again (`create_triggers`); tests/segmentation/test_preview_cache.py would catch it.

Revision ID: segmentation_0009
Revises: segmentation_0008
"""
import sqlalchemy as sa
from alembic import op

revision = "segmentation_0009"
down_revision = "segmentation_0008"

TABLES = ("customer_events", "memberships", "funnel_stages")
SQLITE_NEXT = "(SELECT coalesce(max(version), 0) + 1 FROM fact_changes)"


def upgrade() -> None:
    op.create_table(
        "fact_changes",
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_fact_changes")),
    )
    op.create_index("ix_fact_changes_version", "fact_changes", ["version"])
    op.create_table(
        "fact_generation",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fact_generation")),
    )
    op.execute("INSERT INTO fact_generation (id, generation) VALUES (1, 0)")
    create_triggers()


def create_triggers() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_triggers()
    else:
        _postgresql_triggers()


def _sqlite_touch(row: str, guarded: bool) -> str:
    guard = f"WHERE EXISTS (SELECT 1 FROM profiles WHERE customer_id = {row}.customer_id)" if guarded else "WHERE true"
    return (f"INSERT INTO fact_changes (customer_id, version) SELECT {row}.customer_id, {SQLITE_NEXT} {guard} "
            "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version;")


def _sqlite_triggers() -> None:
    forget = ("DELETE FROM fact_changes WHERE customer_id = OLD.customer_id; "
              "UPDATE fact_generation SET generation = generation + 1;")
    op.execute(f"CREATE TRIGGER fact_profiles_insert AFTER INSERT ON profiles BEGIN {_sqlite_touch('NEW', False)} END")
    op.execute("CREATE TRIGGER fact_profiles_update AFTER UPDATE ON profiles BEGIN "
               f"{_sqlite_touch('NEW', False)} END")
    op.execute("CREATE TRIGGER fact_profiles_rename AFTER UPDATE OF customer_id ON profiles "
               f"WHEN OLD.customer_id <> NEW.customer_id BEGIN {forget} END")
    op.execute(f"CREATE TRIGGER fact_profiles_delete AFTER DELETE ON profiles BEGIN {forget} END")
    for table in TABLES:
        op.execute(f"CREATE TRIGGER fact_{table}_insert AFTER INSERT ON {table} BEGIN {_sqlite_touch('NEW', True)} END")
        op.execute(f"CREATE TRIGGER fact_{table}_update AFTER UPDATE ON {table} BEGIN "
                   f"{_sqlite_touch('OLD', True)} {_sqlite_touch('NEW', True)} END")
        op.execute(f"CREATE TRIGGER fact_{table}_delete AFTER DELETE ON {table} BEGIN {_sqlite_touch('OLD', True)} END")


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
    for table in TABLES:
        op.execute(f"CREATE TRIGGER fact_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION fact_row_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("profiles_insert", "profiles_update", "profiles_rename", "profiles_delete",
                     *(f"{t}_{k}" for t in TABLES for k in ("insert", "update", "delete"))):
            op.execute(f"DROP TRIGGER IF EXISTS fact_{name}")
    else:
        for table in ("profiles", *TABLES):
            op.execute(f"DROP TRIGGER IF EXISTS fact_{table} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS fact_row_changed()")
        op.execute("DROP FUNCTION IF EXISTS fact_profile_changed()")
        op.execute("DROP FUNCTION IF EXISTS fact_touch(text, boolean)")
    op.drop_table("fact_generation")
    op.drop_table("fact_changes")
