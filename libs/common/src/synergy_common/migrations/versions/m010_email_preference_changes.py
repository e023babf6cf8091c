"""Marketing (issue 10): every email-preference change, kept as an audit trail and as the outbox of the
`email_preferences_changed` events.

A change is written in the same transaction as the email_preferences row it changes, with the envelope to
publish; a relay publishes unpublished rows in id order (one relay at a time, under an advisory lock) and
stamps `published_at`. So a change that Postgres accepted reaches synergy.marketing.v1 even when Kafka was
away when it was made, and a one-click unsubscribe can be proven later (who, when, from where).

Revision ID: m010_email_preference_changes
Revises: m001_marketing
"""

from alembic import op

revision = "m010_email_preference_changes"
down_revision = "m001_marketing"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE email_preference_changes (
  change_id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL,
  user_id VARCHAR(150) NOT NULL,
  source VARCHAR(32) NOT NULL
    CHECK (source IN ('api', 'preference_centre', 'one_click', 'customer_io')),
  changes JSONB NOT NULL,
  envelope JSONB NOT NULL,
  changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  published_at TIMESTAMPTZ
);
CREATE INDEX idx_email_preference_changes_user ON email_preference_changes (brand_id, user_id, change_id);
CREATE INDEX idx_email_preference_changes_unpublished ON email_preference_changes (change_id)
  WHERE published_at IS NULL
"""

DOWNGRADE = """
DROP TABLE IF EXISTS email_preference_changes
"""


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def upgrade() -> None:
    for statement in _statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DOWNGRADE):
        op.execute(statement)
