"""Dead letters of every service in one table: destination, first attempt, one row per source offset.

The unique key makes a retried dead-letter write a no-op instead of a duplicate.

Revision ID: 0005_dlq
Revises: 0003
"""

from alembic import op

revision = "0005_dlq"
down_revision = "0003"
branch_labels = None
depends_on = None

STATEMENTS = (
    "ALTER TABLE dlq_messages ADD COLUMN destination VARCHAR(128) NOT NULL DEFAULT ''",
    "ALTER TABLE dlq_messages ADD COLUMN first_attempt_at TIMESTAMPTZ",
    """
    DELETE FROM dlq_messages d USING dlq_messages e
    WHERE d.service = e.service AND d.source_topic = e.source_topic
      AND d.source_partition = e.source_partition AND d.source_offset = e.source_offset AND d.id > e.id
    """,
    """
    CREATE UNIQUE INDEX uq_dlq_messages_source
    ON dlq_messages (service, destination, source_topic, source_partition, source_offset)
    """,
    "CREATE INDEX idx_dlq_messages_service ON dlq_messages (service, reason, created_at)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX idx_dlq_messages_service")
    op.execute("DROP INDEX uq_dlq_messages_source")
    op.execute("ALTER TABLE dlq_messages DROP COLUMN first_attempt_at")
    op.execute("ALTER TABLE dlq_messages DROP COLUMN destination")
