"""receive conflicts: instance digests, the study's patient key, and refused conflicting instances

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_key", sa.String(length=64), nullable=True))
    op.create_table(
        "receive_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("stored_study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.Enum("INSTANCE", "PATIENT", name="conflictkind", native_enum=False, length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("receive_conflicts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_receive_conflicts_study_instance_uid"), ["study_instance_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("receive_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_receive_conflicts_study_instance_uid"))
    op.drop_table("receive_conflicts")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("patient_key")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("digest")
