"""cio-sink: dead letters kept in Postgres for `synergy dlq list|replay`.

Brand privacy opt-ins live in brands.settings -> {"privacy": {"hash_emails": bool, "truncate_ips": bool}}.

Revision ID: 0003
Revises: 0001
"""

from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("cio_sink",)
depends_on = None


STATEMENTS = (
    """
    CREATE TABLE dlq_messages (
      id BIGSERIAL PRIMARY KEY,
      service VARCHAR(64) NOT NULL,
      reason VARCHAR(128) NOT NULL,
      detail TEXT,
      brand_id BIGINT,
      event_id VARCHAR(64),
      source_topic VARCHAR(255) NOT NULL,
      source_partition INT NOT NULL,
      source_offset BIGINT NOT NULL,
      message_key TEXT,
      payload BYTEA NOT NULL,
      headers JSONB NOT NULL DEFAULT '[]'::jsonb,
      attempts INT NOT NULL DEFAULT 0,
      created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
      replayed_at TIMESTAMPTZ,
      replay_attempts INT NOT NULL DEFAULT 0,
      last_replay_error TEXT
    )
    """,
    "CREATE INDEX idx_dlq_messages_created ON dlq_messages (created_at)",
    "CREATE INDEX idx_dlq_messages_reason ON dlq_messages (reason, created_at)",
    "CREATE INDEX idx_dlq_messages_pending ON dlq_messages (service, created_at) WHERE replayed_at IS NULL",
)


def upgrade() -> None:
    # One statement per call: the asyncpg driver prepares each, and cannot prepare several at once.
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE dlq_messages")
