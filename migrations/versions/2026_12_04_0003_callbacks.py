"""Signed callbacks: subscriptions (URL + signing secret), the delivery outbox, and a job's subscription.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Reviewed by hand: the new column on `job` is nullable (existing jobs have no callback) and its foreign key
sets NULL when a subscription is removed; deliveries cascade with their subscription or job. The unique
(subscription_id, dedupe_key) constraint is what makes "one terminal event per job" hold across workers and
retries. SQLite needs batch mode to add a column with a foreign key.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "callback_subscription",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("stage_events", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_subscription")),
    )
    op.create_index(op.f("ix_callback_subscription_owner"), "callback_subscription", ["owner"])
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("callback_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_job_callback_id_callback_subscription"),
            "callback_subscription",
            ["callback_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "callback_delivery",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("event_type", sa.String(length=50), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("abandoned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["callback_subscription.id"],
            name=op.f("fk_callback_delivery_subscription_id_callback_subscription"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_callback_delivery_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_delivery")),
        sa.UniqueConstraint("subscription_id", "dedupe_key", name="uq_callback_delivery_subscription_dedupe"),
    )
    op.create_index(
        "ix_callback_delivery_due", "callback_delivery", ["delivered_at", "abandoned_at", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_callback_delivery_due", table_name="callback_delivery")
    op.drop_table("callback_delivery")
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint(op.f("fk_job_callback_id_callback_subscription"), type_="foreignkey")
        batch.drop_column("callback_id")
    op.drop_index(op.f("ix_callback_subscription_owner"), table_name="callback_subscription")
    op.drop_table("callback_subscription")
