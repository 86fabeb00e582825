"""notifications: incidents end on their own (MQTT ``end`` after a quiet window)

Revision ID: 0003_notify_end
Revises: 0002_notify
Create Date: 2026-11-27 13:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_notify_end"
down_revision = "0002_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notify_incidents") as batch:
        batch.add_column(sa.Column("touched_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("end_sent", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("notify_incidents") as batch:
        batch.drop_column("end_sent")
        batch.drop_column("ended_at")
        batch.drop_column("touched_at")
