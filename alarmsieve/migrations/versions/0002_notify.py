"""notifications: routing, incidents, dead letters, payloads

Revision ID: 0002_notify
Revises: 0001
Create Date: 2026-11-27 11:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_notify"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("camera", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("incident_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("dead", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_notifications_recipient_created_at", ["recipient", "created_at"])
        batch.create_index("ix_notifications_state", ["state"])
    op.create_table(
        "notify_payloads",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_notify_payloads")),
    )
    op.create_table(
        "notify_scopes",
        sa.Column("scope", sa.String(length=250), nullable=False),
        sa.Column("incident_id", sa.String(length=64), nullable=True),
        sa.Column("touched", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_notify_scopes")),
    )
    op.create_table(
        "notify_incidents",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=250), nullable=False),
        sa.Column("camera", sa.String(length=200), nullable=False),
        sa.Column("site", sa.String(length=200), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_update_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("alarms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_incidents")),
    )
    op.create_index("ix_notify_incidents_scope", "notify_incidents", ["scope"])
    op.create_table(
        "notify_alarms",
        sa.Column("alarm_key", sa.String(length=64), nullable=False),
        sa.Column("incident_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("alarms", sa.Integer(), nullable=False),
        sa.Column("ended_incident", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("alarm_key", name=op.f("pk_notify_alarms")),
    )
    op.create_table(
        "notify_suppressed",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_notify_suppressed")),
    )


def downgrade() -> None:
    op.drop_table("notify_suppressed")
    op.drop_table("notify_alarms")
    op.drop_index("ix_notify_incidents_scope", table_name="notify_incidents")
    op.drop_table("notify_incidents")
    op.drop_table("notify_scopes")
    op.drop_table("notify_payloads")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index("ix_notifications_state")
        batch.drop_index("ix_notifications_recipient_created_at")
        for column in ("last_attempt_at", "first_attempt_at", "dead", "kind", "incident_id", "camera"):
            batch.drop_column(column)
