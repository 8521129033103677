"""funnel: attempts.journey, each counted attempt's page, track and identify events within its window
(with channels and names) and the revenue of each stage's event, for trends, attribution and
touchpoints (docs/api.md section 9) without reading events per request.

Revision ID: funnel_0006
Revises: funnel_0005
"""
import sqlalchemy as sa
from alembic import op

revision = "funnel_0006"
down_revision = "funnel_0005"


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("journey", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("journey")
