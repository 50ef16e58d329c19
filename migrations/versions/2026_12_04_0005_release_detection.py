"""Release detection: Hub webhook notifications, where each rule stands with each release, and job links.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

Reviewed by hand: `watch_sighting`'s primary key (rule, repo, commit) makes "release detected" one event
however often a release is seen; a sighting goes with its rule (CASCADE). `hub_notification` is a queue of
received webhook payloads, indexed for the "pending and due" scan. The two new `job` columns are nullable
(hand-made jobs) and SET NULL, so deleting a rule or pruning its events never deletes a job.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "watch_sighting",
        sa.Column("watch_id", sa.Uuid(), nullable=False),
        sa.Column("repo_id", sa.String(length=200), nullable=False),
        sa.Column("revision_sha", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detected_event_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["watch_id"], ["watch.id"], name=op.f("fk_watch_sighting_watch_id_watch"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["detected_event_id"],
            ["watch_event.id"],
            name=op.f("fk_watch_sighting_detected_event_id_watch_event"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("watch_id", "repo_id", "revision_sha", name=op.f("pk_watch_sighting")),
    )
    op.create_table(
        "hub_notification",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("repo_id", sa.String(length=200), nullable=False),
        sa.Column("head_sha", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("scope", sa.String(length=50), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_notification")),
    )
    op.create_index("ix_hub_notification_pending", "hub_notification", ["processed_at", "due_at"])
    with op.batch_alter_table("job") as batch:  # SQLite needs batch mode for columns with foreign keys
        batch.add_column(sa.Column("watch_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("watch_event_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(op.f("fk_job_watch_id_watch"), "watch", ["watch_id"], ["id"], ondelete="SET NULL")
        batch.create_foreign_key(
            op.f("fk_job_watch_event_id_watch_event"), "watch_event", ["watch_event_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint(op.f("fk_job_watch_event_id_watch_event"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_job_watch_id_watch"), type_="foreignkey")
        batch.drop_column("watch_event_id")
        batch.drop_column("watch_id")
    op.drop_index("ix_hub_notification_pending", table_name="hub_notification")
    op.drop_table("hub_notification")
    op.drop_table("watch_sighting")
