"""Watch rules: the rules, what they saw (events), and the releases they turned into jobs (exactly once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Reviewed by hand: `watch_release`'s composite primary key (rule, repo, commit, template) is the
exactly-once guarantee for jobs created from releases; events and releases go with their rule (CASCADE);
a release keeps its row when its job or event is removed (SET NULL), so a removed job is never re-created.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "watch",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("token_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("authors", sa.JSON(), nullable=False),
        sa.Column("name_pattern", sa.String(length=200), nullable=False),
        sa.Column("architectures", sa.JSON(), nullable=True),
        sa.Column("min_params", sa.BigInteger(), nullable=True),
        sa.Column("max_params", sa.BigInteger(), nullable=True),
        sa.Column("templates", sa.JSON(), nullable=False),
        sa.Column("new_commits", sa.Boolean(), nullable=False),
        sa.Column("quiet_period_s", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("callback_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_token.id"], name=op.f("fk_watch_token_id_api_token"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["callback_id"],
            ["callback_subscription.id"],
            name=op.f("fk_watch_callback_id_callback_subscription"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watch")),
    )
    op.create_index(op.f("ix_watch_owner"), "watch", ["owner"])
    op.create_table(
        "watch_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("watch_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("repo_id", sa.String(length=200), nullable=False),
        sa.Column("revision_sha", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("job_ids", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["watch_id"], ["watch.id"], name=op.f("fk_watch_event_watch_id_watch"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watch_event")),
    )
    op.create_index("ix_watch_event_watch_created", "watch_event", ["watch_id", "created_at"])
    op.create_table(
        "watch_release",
        sa.Column("watch_id", sa.Uuid(), nullable=False),
        sa.Column("repo_id", sa.String(length=200), nullable=False),
        sa.Column("revision_sha", sa.String(length=64), nullable=False),
        sa.Column("template_index", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("event_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["watch_id"], ["watch.id"], name=op.f("fk_watch_release_watch_id_watch"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_watch_release_job_id_job"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["event_id"], ["watch_event.id"], name=op.f("fk_watch_release_event_id_watch_event"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("watch_id", "repo_id", "revision_sha", "template_index", name=op.f("pk_watch_release")),
    )


def downgrade() -> None:
    op.drop_table("watch_release")
    op.drop_index("ix_watch_event_watch_created", table_name="watch_event")
    op.drop_table("watch_event")
    op.drop_index(op.f("ix_watch_owner"), table_name="watch")
    op.drop_table("watch")
