"""HTTP API: tokens and received alarms

Revision ID: 0002_api
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_api"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("camera", sa.String(length=200), nullable=True),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    op.create_table(
        "api_alarms",
        sa.Column("id", sa.String(length=500), nullable=False),
        sa.Column("camera", sa.String(length=200), nullable=False),
        sa.Column("site", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=True),
        sa.Column("commit_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_alarms")),
    )
    op.create_index(op.f("ix_api_alarms_camera"), "api_alarms", ["camera"])
    op.create_index(op.f("ix_api_alarms_site"), "api_alarms", ["site"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_alarms_site"), table_name="api_alarms")
    op.drop_index(op.f("ix_api_alarms_camera"), table_name="api_alarms")
    op.drop_table("api_alarms")
    op.drop_table("api_tokens")
