"""Insights: webhook deduplication, replay refusal and retry parking for Customer.io webhooks.

- customer_io_webhook_log gains the brand it belongs to, Customer.io's event_id (unique per brand,
  so a redelivery inserts nothing), the person's external id, the signature and its timestamp, and
  the retry bookkeeping: attempts and next_attempt_at. processed_successfully NULL means pending
  (not yet processed, failed transiently, or its user is not known yet); TRUE done; FALSE given up.
- customer_io_webhook_signatures remembers every accepted signature while its timestamp is inside
  the tolerance window, so the same signed request sent again is refused.

Revision ID: 0004
Revises: 0001
"""

from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE customer_io_webhook_log
  ADD COLUMN brand_id BIGINT REFERENCES brands(id),
  ADD COLUMN event_id VARCHAR(64),
  ADD COLUMN external_user_id VARCHAR(150),
  ADD COLUMN signature CHAR(64),
  ADD COLUMN signed_at TIMESTAMPTZ,
  ADD COLUMN attempts INT NOT NULL DEFAULT 0,
  ADD COLUMN next_attempt_at TIMESTAMPTZ;

CREATE UNIQUE INDEX uq_webhook_log_brand_event
  ON customer_io_webhook_log (brand_id, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX idx_webhook_log_pending
  ON customer_io_webhook_log (next_attempt_at) WHERE processed_successfully IS NULL;
CREATE INDEX idx_webhook_log_brand_user ON customer_io_webhook_log (brand_id, external_user_id);

CREATE TABLE customer_io_webhook_signatures (
  signature CHAR(64) PRIMARY KEY,
  signed_at TIMESTAMPTZ NOT NULL,
  seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_webhook_signatures_signed_at ON customer_io_webhook_signatures (signed_at);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS customer_io_webhook_signatures;
DROP INDEX IF EXISTS idx_webhook_log_brand_user;
DROP INDEX IF EXISTS idx_webhook_log_pending;
DROP INDEX IF EXISTS uq_webhook_log_brand_event;
ALTER TABLE customer_io_webhook_log
  DROP COLUMN IF EXISTS next_attempt_at,
  DROP COLUMN IF EXISTS attempts,
  DROP COLUMN IF EXISTS signed_at,
  DROP COLUMN IF EXISTS signature,
  DROP COLUMN IF EXISTS external_user_id,
  DROP COLUMN IF EXISTS event_id,
  DROP COLUMN IF EXISTS brand_id;
"""


def _statements(script: str) -> list[str]:
    # One statement per execute: asyncpg refuses several commands in one prepared statement.
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def upgrade() -> None:
    for statement in _statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DOWNGRADE):
        op.execute(statement)
