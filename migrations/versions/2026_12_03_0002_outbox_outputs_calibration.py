"""Outbox column on jobs, per-token output allow-lists, output repo reservations, inline calibration texts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Reviewed by hand: `job.enqueued_at` is nullable (NULL = not yet published); existing queued jobs are
marked published at upgrade time, since the old code sent their messages at submit (the sweep still
re-publishes any whose message is really gone). `output_repo` is keyed by the case-folded repo id because
the Hub treats names case-insensitively. SQLite needs batch mode to add a column with a JSON type safely.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sa.text("UPDATE job SET enqueued_at = updated_at WHERE status = 'queued'"))
    with op.batch_alter_table("api_token") as batch:
        batch.add_column(sa.Column("output_patterns", sa.JSON(), nullable=True))

    op.create_table(
        "calibration_text",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("chars", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_calibration_text")),
    )
    op.create_table(
        "output_repo",
        sa.Column("repo_key", sa.String(length=200), nullable=False),
        sa.Column("repo_id", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("hub_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_output_repo_job_id_job"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("repo_key", name=op.f("pk_output_repo")),
    )
    op.create_index(op.f("ix_output_repo_owner"), "output_repo", ["owner"])


def downgrade() -> None:
    op.drop_index(op.f("ix_output_repo_owner"), table_name="output_repo")
    op.drop_table("output_repo")
    op.drop_table("calibration_text")
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("output_patterns")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("enqueued_at")
