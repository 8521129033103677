"""followup: erasure tombstones keep a keyed hash (HMAC-SHA256 with ERASURE_KEY) instead of the id.

Revision ID: followup_0003
Revises: followup_0002
"""
from alembic import op

from shared.identity import hash_erasure_tombstones, unhash_erasure_tombstones

revision = "followup_0003"
down_revision = "followup_0002"


def upgrade() -> None:
    hash_erasure_tombstones(op)


def downgrade() -> None:
    unhash_erasure_tombstones(op)
