"""deliveries.lease_owner/lease_expires_at and sent_objects: a delivery is held by one sender while
it sends (the lease is renewed), and each acknowledged object is recorded so no attempt sends it twice

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
    op.create_table(
        "sent_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"]),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id", "result_id", name="uq_sent_objects_delivery_result"),
    )
    with op.batch_alter_table("sent_objects") as batch_op:
        batch_op.create_index(batch_op.f("ix_sent_objects_delivery_id"), ["delivery_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sent_objects") as batch_op:
        batch_op.drop_index(batch_op.f("ix_sent_objects_delivery_id"))
    op.drop_table("sent_objects")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
