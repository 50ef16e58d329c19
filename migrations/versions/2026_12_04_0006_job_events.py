"""Job events: the ordered history of each job's changes, streamed by `GET /jobs/{id}/events`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Reviewed by hand: a bigint identity primary key (INTEGER on SQLite, so it auto-increments there too) is
the Server-Sent Events id, ordered across the table; `(job_id, id)` serves "this job's events after N";
events go with their job (CASCADE). Jobs created before this revision have no events; the stream answers
for them from the job row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_job_event_job_id_job"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_event")),
    )
    op.create_index("ix_job_event_job_id", "job_event", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_event_job_id", table_name="job_event")
    op.drop_table("job_event")
