"""Brand secrets: each brand's own Customer.io webhook signing keys, encrypted at rest (Fernet).

- brands.cio_webhook_signing_key: the key the brand's Customer.io workspace signs with; a brand with
  one is verified with its own keys only.
- brands.cio_webhook_signing_key_previous: the key it replaced, accepted too during a rotation.
Both NULL: the deployment's CIO_WEBHOOK_SIGNING_KEY serves the brand.

Revision ID: 0005
Revises: 0001
"""

from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE brands ADD COLUMN cio_webhook_signing_key TEXT, "
        "ADD COLUMN cio_webhook_signing_key_previous TEXT"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE brands DROP COLUMN IF EXISTS cio_webhook_signing_key_previous, "
        "DROP COLUMN IF EXISTS cio_webhook_signing_key"
    )
