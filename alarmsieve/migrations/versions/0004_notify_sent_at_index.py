"""notifications: index on sent_at (the delivery-time metric reads only what was sent since its last look)

Revision ID: 0004_notify_sent_at
Revises: 0003_notify_end
Create Date: 2026-11-27 17:50:00
"""

from alembic import op

revision = "0004_notify_sent_at"
down_revision = "0003_notify_end"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notifications_sent_at", "notifications", ["sent_at"])


def downgrade() -> None:
    op.drop_index("ix_notifications_sent_at", table_name="notifications")
