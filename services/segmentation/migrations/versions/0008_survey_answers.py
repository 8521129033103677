"""segmentation: survey answers and the latest NPS and CSAT on profiles (docs/api.md section 11).

Revision ID: segmentation_0008
Revises: segmentation_0007
"""
import sqlalchemy as sa
from alembic import op

from shared.store import UTCDateTime

revision = "segmentation_0008"
down_revision = "segmentation_0007"


def upgrade() -> None:
    op.create_table(
        "survey_answers",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("survey", sa.String(10), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("channel", sa.String(50)),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_survey_answers")),
    )
    op.create_index("ix_survey_answers_customer_id", "survey_answers", ["customer_id", "survey", "at"])
    op.create_index("ix_survey_answers_survey_at", "survey_answers", ["survey", "at"])
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.add_column(sa.Column("nps_score", sa.Integer))
        batch_op.add_column(sa.Column("nps_at", UTCDateTime))
        batch_op.add_column(sa.Column("csat_score", sa.Integer))
        batch_op.add_column(sa.Column("csat_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch_op:
        for column in ("csat_at", "csat_score", "nps_at", "nps_score"):
            batch_op.drop_column(column)
    op.drop_table("survey_answers")
