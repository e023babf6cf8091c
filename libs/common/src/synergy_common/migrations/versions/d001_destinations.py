"""Dispatcher: the destinations each brand's events are forwarded to (seed 002), and their status.

- destinations: one webhook or PostHog project, of a brand, or of the deployment (brand_id NULL,
  origin 'environment': DOMAIN_EVENT_WEBHOOK_URL / POSTHOG_PROJECT_API_KEY, which get every brand's
  events). `secrets` is a Fernet ciphertext (SYNERGY_ENCRYPTION_KEY) of a JSON object, like the
  brands' Customer.io keys; environment destinations keep theirs in the environment only.
  state: active | paused (credentials refused, retrying) | disabled (410, or by hand), with why.
  The delivered / failed / dead-lettered totals are added to by every dispatcher replica.
- destination_lag: each replica's backlog per destination, summed by the status readers.

Revision ID: d001_destinations
Revises: 0001
"""

from alembic import op

revision = "d001_destinations"
down_revision = "0001"
branch_labels = ("dispatcher",)
depends_on = None

UPGRADE = """
CREATE TABLE destinations (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT REFERENCES brands(id) ON DELETE CASCADE,
  name VARCHAR(128) NOT NULL,
  type VARCHAR(16) NOT NULL CHECK (type IN ('webhook', 'posthog')),
  origin VARCHAR(16) NOT NULL DEFAULT 'cli' CHECK (origin IN ('cli', 'environment')),
  settings JSONB NOT NULL DEFAULT '{}'::jsonb,
  secrets TEXT,
  state VARCHAR(16) NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'disabled')),
  disabled_reason TEXT,
  state_changed_at TIMESTAMPTZ,
  delivered_total BIGINT NOT NULL DEFAULT 0,
  failed_total BIGINT NOT NULL DEFAULT 0,
  dead_lettered_total BIGINT NOT NULL DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CHECK ((origin = 'environment') = (brand_id IS NULL))
);
CREATE UNIQUE INDEX uq_destinations_brand_name ON destinations (brand_id, name) WHERE brand_id IS NOT NULL;
CREATE UNIQUE INDEX uq_destinations_environment ON destinations (name) WHERE origin = 'environment';
CREATE INDEX idx_destinations_brand ON destinations (brand_id);

CREATE TABLE destination_lag (
  destination_id BIGINT NOT NULL REFERENCES destinations(id) ON DELETE CASCADE,
  replica VARCHAR(128) NOT NULL,
  lag BIGINT NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (destination_id, replica)
);
"""


def upgrade() -> None:
    for statement in UPGRADE.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE destination_lag")
    op.execute("DROP TABLE destinations")
