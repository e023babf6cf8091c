"""Marketing: seed 004's ProductViews, Cart, WatchList, MarketingQueue and EmailPreferences as tables,
plus the durable timers of the trigger windows and the consumer's idempotency by event id.

- A "person" is `identifiers.id`, or `anon:<anonymous_id>` until an identify joins it to a user
  (marketing_identities); triggers fire only for identified people.
- product_views is one row per (brand, person, product): seed 004's fields, the view counts, and the
  current browse cycle (the views since the product was last added to the cart or an order placed).
  Kept 90 days after the last view.
- marketing_timers are the windows' deadlines, on event time. One pending timer per (brand, person,
  trigger, subject); a later cart change moves it (and re-arms it). A fired timer keeps fired_at, so an
  unchanged cart does not fire twice. The scheduler claims due ones FOR UPDATE SKIP LOCKED.
- marketing_queue keeps every decision (sent or suppressed with its reason), 30 days after sending.
- email_preferences: seed 004's defaults, all true except unsubscribed.

Revision ID: m001_marketing
Revises: 0001
"""

from alembic import op

revision = "m001_marketing"
down_revision = "0001"
branch_labels = ("marketing",)
depends_on = None

UPGRADE = """
CREATE TABLE marketing_applied_events (
  brand_id BIGINT NOT NULL,
  event_id CHAR(26) NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (brand_id, event_id)
);
CREATE INDEX idx_marketing_applied_events_at ON marketing_applied_events (applied_at);

CREATE TABLE marketing_identities (
  brand_id BIGINT NOT NULL,
  anonymous_id VARCHAR(150) NOT NULL,
  user_id VARCHAR(150) NOT NULL,
  linked_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (brand_id, anonymous_id)
);

CREATE TABLE marketing_products (
  brand_id BIGINT NOT NULL,
  product_id VARCHAR(100) NOT NULL,
  product_name VARCHAR(255),
  price NUMERIC(14, 2),
  in_stock BOOLEAN,
  changed_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (brand_id, product_id)
);

CREATE TABLE product_views (
  brand_id BIGINT NOT NULL,
  person VARCHAR(160) NOT NULL,
  product_id VARCHAR(100) NOT NULL,
  user_id VARCHAR(150),
  view_id VARCHAR(100),
  session_id VARCHAR(100),
  product_name VARCHAR(255),
  product_price NUMERIC(14, 2),
  product_category VARCHAR(255),
  image_url TEXT,
  view_duration INT NOT NULL DEFAULT 0,
  referrer TEXT,
  device_type VARCHAR(20),
  browser VARCHAR(255),
  view_count INT NOT NULL DEFAULT 0,
  first_viewed_at TIMESTAMPTZ NOT NULL,
  last_viewed_at TIMESTAMPTZ NOT NULL,
  browse_views INT NOT NULL DEFAULT 0,
  browse_started_at TIMESTAMPTZ,
  browse_exited_at TIMESTAMPTZ,
  added_to_cart BOOLEAN NOT NULL DEFAULT FALSE,
  added_to_cart_at TIMESTAMPTZ,
  purchased BOOLEAN NOT NULL DEFAULT FALSE,
  purchased_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (brand_id, person, product_id)
);
CREATE INDEX idx_product_views_category ON product_views (brand_id, product_category);
CREATE INDEX idx_product_views_product ON product_views (brand_id, product_id);
CREATE INDEX idx_product_views_last_viewed ON product_views (last_viewed_at);

CREATE TABLE carts (
  brand_id BIGINT NOT NULL,
  person VARCHAR(160) NOT NULL,
  cart_id VARCHAR(100),
  currency CHAR(3),
  last_changed_at TIMESTAMPTZ,
  last_order_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (brand_id, person)
);

CREATE TABLE cart_items (
  brand_id BIGINT NOT NULL,
  person VARCHAR(160) NOT NULL,
  product_id VARCHAR(100) NOT NULL,
  product_name VARCHAR(255),
  sku VARCHAR(100),
  product_category VARCHAR(255),
  quantity INT NOT NULL CHECK (quantity > 0),
  price NUMERIC(14, 2),
  image_url TEXT,
  added_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (brand_id, person, product_id),
  FOREIGN KEY (brand_id, person) REFERENCES carts (brand_id, person) ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE watch_list (
  brand_id BIGINT NOT NULL,
  user_id VARCHAR(160) NOT NULL,
  product_id VARCHAR(100) NOT NULL,
  product_name VARCHAR(255),
  product_category VARCHAR(255),
  image_url TEXT,
  current_price NUMERIC(14, 2),
  original_price NUMERIC(14, 2),
  target_price NUMERIC(14, 2),
  currency CHAR(3),
  in_stock BOOLEAN,
  notify_on_price_drop BOOLEAN NOT NULL DEFAULT TRUE,
  notify_on_restock BOOLEAN NOT NULL DEFAULT TRUE,
  notified_price_drop BOOLEAN NOT NULL DEFAULT FALSE,
  notified_restock BOOLEAN NOT NULL DEFAULT FALSE,
  watched_at TIMESTAMPTZ NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (brand_id, user_id, product_id)
);
CREATE INDEX idx_watch_list_product ON watch_list (brand_id, product_id);

CREATE TABLE marketing_timers (
  timer_id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL,
  person VARCHAR(160) NOT NULL,
  trigger VARCHAR(32) NOT NULL
    CHECK (trigger IN ('cart_abandoned', 'browse_abandoned', 'price_dropped', 'back_in_stock')),
  subject VARCHAR(200) NOT NULL DEFAULT '',
  due_at TIMESTAMPTZ NOT NULL,
  details JSONB NOT NULL DEFAULT '{}'::jsonb,
  fired_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (brand_id, person, trigger, subject)
);
CREATE INDEX idx_marketing_timers_due ON marketing_timers (due_at) WHERE fired_at IS NULL;

CREATE TABLE marketing_queue (
  queue_id VARCHAR(64) PRIMARY KEY,
  brand_id BIGINT NOT NULL,
  user_id VARCHAR(150) NOT NULL,
  user_email VARCHAR(255),
  user_name VARCHAR(255),
  trigger_type VARCHAR(32) NOT NULL,
  event_name VARCHAR(32) NOT NULL,
  event_id CHAR(26) NOT NULL,
  trigger_data JSONB NOT NULL,
  message_data JSONB,
  discount_code VARCHAR(64),
  discount_amount INT,
  scheduled_send_time TIMESTAMPTZ NOT NULL,
  status VARCHAR(16) NOT NULL CHECK (status IN ('sent', 'suppressed', 'converted')),
  reason VARCHAR(32),
  sent BOOLEAN NOT NULL DEFAULT FALSE,
  sent_at TIMESTAMPTZ,
  email_subject TEXT,
  email_template VARCHAR(64),
  opened BOOLEAN NOT NULL DEFAULT FALSE,
  opened_at TIMESTAMPTZ,
  clicked BOOLEAN NOT NULL DEFAULT FALSE,
  clicked_at TIMESTAMPTZ,
  converted BOOLEAN NOT NULL DEFAULT FALSE,
  converted_at TIMESTAMPTZ,
  conversion_order_id VARCHAR(100),
  conversion_revenue NUMERIC(14, 2),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_marketing_queue_user ON marketing_queue (brand_id, user_id, created_at DESC);
CREATE UNIQUE INDEX uq_marketing_queue_event ON marketing_queue (event_id);
CREATE INDEX idx_marketing_queue_sent_at ON marketing_queue (sent_at) WHERE sent;

CREATE TABLE email_preferences (
  brand_id BIGINT NOT NULL,
  user_id VARCHAR(150) NOT NULL,
  email VARCHAR(255),
  marketing_emails BOOLEAN NOT NULL DEFAULT TRUE,
  abandoned_cart_emails BOOLEAN NOT NULL DEFAULT TRUE,
  browse_abandonment_emails BOOLEAN NOT NULL DEFAULT TRUE,
  price_drop_alerts BOOLEAN NOT NULL DEFAULT TRUE,
  back_in_stock_alerts BOOLEAN NOT NULL DEFAULT TRUE,
  product_recommendations BOOLEAN NOT NULL DEFAULT TRUE,
  newsletter BOOLEAN NOT NULL DEFAULT TRUE,
  promotional_emails BOOLEAN NOT NULL DEFAULT TRUE,
  unsubscribed BOOLEAN NOT NULL DEFAULT FALSE,
  unsubscribe_token VARCHAR(255),
  unsubscribed_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (brand_id, user_id)
);
CREATE TRIGGER trg_email_preferences_updated BEFORE UPDATE ON email_preferences
  FOR EACH ROW EXECUTE FUNCTION set_updated_at()
"""

DOWNGRADE = """
DROP TABLE IF EXISTS email_preferences;
DROP TABLE IF EXISTS marketing_queue;
DROP TABLE IF EXISTS marketing_timers;
DROP TABLE IF EXISTS watch_list;
DROP TABLE IF EXISTS cart_items;
DROP TABLE IF EXISTS carts;
DROP TABLE IF EXISTS product_views;
DROP TABLE IF EXISTS marketing_products;
DROP TABLE IF EXISTS marketing_identities;
DROP TABLE IF EXISTS marketing_applied_events
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
