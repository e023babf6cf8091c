"""Dispatcher: a durable backlog per destination, so one destination's outage never stalls another's.

- destination_backlog: the items a destination could not take at once (a retryable failure, a paused
  key) and every later item of that destination until the backlog drains. One row per (destination,
  event): `payload` is the source record's value (the envelope), with its key, headers and position
  for the dead letter. `seq` orders a user's items; `user_key` is the dispatcher's order key
  ("destination:brand:user"). `attempts`, `first_attempt_at` and `next_attempt_at` carry the retry
  budget across restarts; `claimed_by` / `claimed_until` lease a user's head items to one replica.
- destination_lag.consumer_lag: the consumer group's lag (shared by every destination) as each
  replica saw it, summed by the status readers.

Revision ID: d002_destination_backlog
Revises: d001_destinations
"""

from alembic import op

revision = "d002_destination_backlog"
down_revision = "d001_destinations"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE destination_backlog (
  seq BIGSERIAL PRIMARY KEY,
  destination_id BIGINT NOT NULL REFERENCES destinations(id) ON DELETE CASCADE,
  user_key TEXT NOT NULL,
  event_id TEXT NOT NULL,
  payload BYTEA NOT NULL,
  message_key BYTEA,
  headers JSONB NOT NULL DEFAULT '[]'::jsonb,
  source_topic TEXT NOT NULL,
  source_partition INTEGER NOT NULL,
  source_offset BIGINT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  first_attempt_at TIMESTAMPTZ,
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_error TEXT,
  claimed_by VARCHAR(128),
  claimed_until TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT uq_destination_backlog_event UNIQUE (destination_id, event_id)
);
CREATE INDEX idx_destination_backlog_user ON destination_backlog (destination_id, user_key, seq);
ALTER TABLE destination_lag ADD COLUMN consumer_lag BIGINT NOT NULL DEFAULT 0
"""


def upgrade() -> None:
    for statement in UPGRADE.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("ALTER TABLE destination_lag DROP COLUMN consumer_lag")
    op.execute("DROP TABLE destination_backlog")
