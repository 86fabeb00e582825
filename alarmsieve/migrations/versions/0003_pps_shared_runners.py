"""pps: several runners on one catalog: shared job plans and per-datum claims (leases)

Revision ID: 0003_pps_shared_runners
Revises: 0002_pps
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_pps_shared_runners"
down_revision = "0002_pps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pps_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shared_plan", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "pps_datum_claims",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("datum_id", sa.String(length=64), nullable=False),
        sa.Column("pipeline", sa.String(length=63), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("roots", sa.Text(), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False, server_default=""),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claims", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("result", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("job_id", "datum_id", name=op.f("pk_pps_datum_claims")),
    )
    with op.batch_alter_table("pps_datum_claims", schema=None) as batch_op:
        batch_op.create_index("ix_pps_datum_claims_job_state", ["job_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_pps_datum_claims_pipeline"), ["pipeline"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pps_datum_claims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pps_datum_claims_pipeline"))
        batch_op.drop_index("ix_pps_datum_claims_job_state")
    op.drop_table("pps_datum_claims")
    with op.batch_alter_table("pps_jobs", schema=None) as batch_op:
        batch_op.drop_column("shared_plan")
