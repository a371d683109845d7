"""stage_durations: how long each pipeline stage took, so /metrics shows the workers' timings

Workers run in other processes (and on other hosts with PostgreSQL): they record their stage
timings here, and the node that serves /metrics reads them at scrape time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stage_durations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("stage_durations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stage_durations_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stage_durations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stage_durations_job_id"))
    op.drop_table("stage_durations")
