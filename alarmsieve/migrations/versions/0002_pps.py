"""pps operations: pipeline reason/pending, version identity, job to_run, workers, state indexes

Revision ID: 0002_pps
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_pps"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pps_pipelines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("pending", sa.String(length=16), nullable=False, server_default=""))
    with op.batch_alter_table("pps_pipeline_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity", sa.Text(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("cause", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("pps_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("to_run", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("pps_processed_datums", schema=None) as batch_op:
        batch_op.create_index("ix_pps_processed_state", ["pipeline", "state"], unique=False)
    with op.batch_alter_table("pps_datums", schema=None) as batch_op:
        batch_op.create_index("ix_pps_datums_job_state", ["job_id", "state"], unique=False)
    op.create_table(
        "pps_workers",
        sa.Column("worker_id", sa.String(length=100), nullable=False),
        sa.Column("pipeline", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_pps_workers")),
    )
    with op.batch_alter_table("pps_workers", schema=None) as batch_op:
        batch_op.create_index("ix_pps_workers_pipeline", ["pipeline"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pps_workers", schema=None) as batch_op:
        batch_op.drop_index("ix_pps_workers_pipeline")
    op.drop_table("pps_workers")
    with op.batch_alter_table("pps_datums", schema=None) as batch_op:
        batch_op.drop_index("ix_pps_datums_job_state")
    with op.batch_alter_table("pps_processed_datums", schema=None) as batch_op:
        batch_op.drop_index("ix_pps_processed_state")
    with op.batch_alter_table("pps_jobs", schema=None) as batch_op:
        batch_op.drop_column("to_run")
    with op.batch_alter_table("pps_pipeline_versions", schema=None) as batch_op:
        batch_op.drop_column("cause")
        batch_op.drop_column("identity")
    with op.batch_alter_table("pps_pipelines", schema=None) as batch_op:
        batch_op.drop_column("pending")
        batch_op.drop_column("reason")
