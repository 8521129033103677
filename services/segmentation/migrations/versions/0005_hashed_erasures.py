"""segmentation: erasure tombstones keep a keyed hash (HMAC-SHA256 with ERASURE_KEY) instead of the id.

Revision ID: segmentation_0005
Revises: segmentation_0004
"""
from alembic import op

from shared.identity import hash_erasure_tombstones, unhash_erasure_tombstones

revision = "segmentation_0005"
down_revision = "segmentation_0004"


def upgrade() -> None:
    hash_erasure_tombstones(op)


def downgrade() -> None:
    unhash_erasure_tombstones(op)
