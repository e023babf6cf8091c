"""Foundation: seed 003's tables in the Postgres dialect, made multi-brand, plus write keys.

Changes from seed 003's MySQL, and why:
- users are per brand: (brand_id, external_id) is the identity events carry ("user-123");
  email and password_hash are nullable because this engine learns of users from events.
- users gains points_spent_total and ai_features (seed 001 §4.2 stores predictions there).
- brands gains customer_io_region; credentials are stored encrypted (Fernet).
- ENUMs become CHECK constraints; JSON becomes jsonb; ON UPDATE timestamps become a trigger.

Revision ID: 0001
Revises:
"""

import re

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES_WITH_UPDATED_AT = (
    "brands", "users", "products", "ranks", "achievement_configs", "user_achievements",
    "custom_fields", "user_custom_field_values",
)

UPGRADE = """
CREATE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN NEW.updated_at = now(); RETURN NEW; END $$ LANGUAGE plpgsql;

CREATE TABLE brands (
  id BIGSERIAL PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  slug VARCHAR(255) UNIQUE NOT NULL,
  customer_io_site_id VARCHAR(100),
  customer_io_api_key TEXT,
  customer_io_region VARCHAR(2) NOT NULL DEFAULT 'us' CHECK (customer_io_region IN ('us', 'eu')),
  settings JSONB NOT NULL DEFAULT '{}'::jsonb,
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE brand_write_keys (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL REFERENCES brands(id) ON DELETE CASCADE,
  key_hash CHAR(64) UNIQUE NOT NULL,
  key_prefix VARCHAR(16) NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  revoked_at TIMESTAMPTZ
);
CREATE INDEX idx_brand_write_keys_brand ON brand_write_keys (brand_id);

CREATE TABLE users (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL REFERENCES brands(id),
  external_id VARCHAR(150) NOT NULL,
  email VARCHAR(255),
  first_name VARCHAR(100),
  last_name VARCHAR(100),
  phone_number VARCHAR(20),
  password_hash VARCHAR(255),
  age_verified_at TIMESTAMPTZ,
  marketing_consent BOOLEAN NOT NULL DEFAULT FALSE,
  referral_code VARCHAR(50) UNIQUE,
  referred_by_user_id BIGINT REFERENCES users(id),
  points_balance BIGINT NOT NULL DEFAULT 0,
  lifetime_points BIGINT NOT NULL DEFAULT 0 CHECK (lifetime_points >= 0),
  points_spent_total BIGINT NOT NULL DEFAULT 0 CHECK (points_spent_total >= 0),
  current_rank_key VARCHAR(50),
  is_guest BOOLEAN NOT NULL DEFAULT FALSE,
  ai_features JSONB NOT NULL DEFAULT '{}'::jsonb,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (brand_id, external_id),
  UNIQUE (brand_id, email)
);
CREATE INDEX idx_users_rank_key ON users (current_rank_key);

CREATE TABLE products (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL REFERENCES brands(id),
  sku VARCHAR(100) NOT NULL,
  name VARCHAR(255) NOT NULL,
  msrp NUMERIC(10,2) NOT NULL,
  points_award INT NOT NULL,
  product_line VARCHAR(100),
  product_form VARCHAR(100),
  strain_name VARCHAR(100),
  strain_type VARCHAR(10) CHECK (strain_type IN ('Sativa', 'Indica', 'Hybrid')),
  potency_thc_percent NUMERIC(5,2),
  potency_cbd_percent NUMERIC(5,2),
  dominant_terpene VARCHAR(100),
  tags JSONB,
  is_featured BOOLEAN NOT NULL DEFAULT FALSE,
  is_new BOOLEAN NOT NULL DEFAULT FALSE,
  is_limited BOOLEAN NOT NULL DEFAULT FALSE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (sku, brand_id)
);
CREATE INDEX idx_products_brand ON products (brand_id);

CREATE TABLE ranks (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL REFERENCES brands(id),
  key VARCHAR(50) NOT NULL,
  name VARCHAR(100) NOT NULL,
  points_required BIGINT NOT NULL CHECK (points_required >= 0),
  point_multiplier NUMERIC(3,2) NOT NULL DEFAULT 1.00,
  benefits TEXT,
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (key, brand_id)
);
CREATE INDEX idx_ranks_brand ON ranks (brand_id);

CREATE TABLE achievement_configs (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT REFERENCES brands(id),
  name VARCHAR(255) NOT NULL,
  description TEXT,
  achievement_key VARCHAR(100) NOT NULL,
  achievement_type VARCHAR(32) NOT NULL CHECK (achievement_type IN
    ('scan_count', 'purchase_amount', 'referral_count', 'wishlist_items', 'achievement_unlocked', 'custom')),
  criteria JSONB NOT NULL,
  rewards JSONB NOT NULL,
  visibility JSONB,
  ai_enhancement JSONB,
  metadata JSONB,
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- NULL brand_id means a global achievement; NULLS NOT DISTINCT keeps the key unique there too.
CREATE UNIQUE INDEX unique_achievement_key_brand ON achievement_configs (achievement_key, brand_id) NULLS NOT DISTINCT;
CREATE INDEX idx_achievement_configs_active ON achievement_configs (is_active);

CREATE TABLE user_achievements (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  achievement_config_id BIGINT NOT NULL REFERENCES achievement_configs(id),
  progress INT NOT NULL DEFAULT 0 CHECK (progress >= 0),
  completed BOOLEAN NOT NULL DEFAULT FALSE,
  completed_at TIMESTAMPTZ,
  points_rewarded INT NOT NULL DEFAULT 0 CHECK (points_rewarded >= 0),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (user_id, achievement_config_id)
);
CREATE INDEX idx_user_achievements_completed ON user_achievements (completed);

CREATE TABLE user_action_log (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  action_type VARCHAR(32) NOT NULL CHECK (action_type IN ('product_scanned', 'referral_initiated',
    'referral_converted', 'wishlist_added', 'achievement_unlocked', 'reward_redeemed',
    'user_session_started', 'user_session_ended')),
  action_data JSONB,
  product_id BIGINT REFERENCES products(id),
  points_awarded INT NOT NULL DEFAULT 0,
  ip_address VARCHAR(45),
  user_agent TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_user_action ON user_action_log (user_id, action_type);
CREATE INDEX idx_user_action_created ON user_action_log (created_at);
CREATE INDEX idx_user_action_product ON user_action_log (product_id);

CREATE TABLE customer_io_event_queue (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id),
  event_name VARCHAR(255) NOT NULL,
  event_data JSONB NOT NULL,
  status VARCHAR(10) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'sent', 'failed')),
  priority INT NOT NULL DEFAULT 10,
  attempt_count INT NOT NULL DEFAULT 0,
  last_attempt_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  processed_at TIMESTAMPTZ
);
CREATE INDEX idx_cio_queue_status_priority ON customer_io_event_queue (status, priority, created_at);
CREATE INDEX idx_cio_queue_user ON customer_io_event_queue (user_id);

CREATE TABLE user_ai_profiles (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
  churn_probability NUMERIC(5,4) NOT NULL DEFAULT 0 CHECK (churn_probability BETWEEN 0 AND 1),
  predicted_lifetime_value NUMERIC(10,2) NOT NULL DEFAULT 0,
  engagement_score NUMERIC(5,4) NOT NULL DEFAULT 0 CHECK (engagement_score BETWEEN 0 AND 1),
  product_affinity_scores JSONB,
  purchase_probability NUMERIC(5,4) NOT NULL DEFAULT 0 CHECK (purchase_probability BETWEEN 0 AND 1),
  recommended_segment VARCHAR(100),
  next_best_action VARCHAR(100),
  ai_insights JSONB,
  calculated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_synced_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_ai_engagement ON user_ai_profiles (engagement_score);
CREATE INDEX idx_ai_churn ON user_ai_profiles (churn_probability);
CREATE INDEX idx_ai_segment ON user_ai_profiles (recommended_segment);

CREATE TABLE customer_io_webhook_log (
  id BIGSERIAL PRIMARY KEY,
  webhook_type VARCHAR(100) NOT NULL,
  user_id BIGINT,
  payload JSONB NOT NULL,
  processed_successfully BOOLEAN,
  error_message TEXT,
  processed_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_webhook_log_user ON customer_io_webhook_log (user_id);
CREATE INDEX idx_webhook_log_type ON customer_io_webhook_log (webhook_type);
CREATE INDEX idx_webhook_log_created ON customer_io_webhook_log (created_at);

CREATE TABLE wishlists (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  product_id BIGINT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
  added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (user_id, product_id)
);

CREATE TABLE user_goals (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  product_id BIGINT REFERENCES products(id),
  goal_type VARCHAR(16) NOT NULL CHECK (goal_type IN ('wishlist_item', 'achievement', 'custom')),
  target_points INT CHECK (target_points >= 0),
  current_points INT NOT NULL DEFAULT 0 CHECK (current_points >= 0),
  goal_name VARCHAR(255),
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  completed_at TIMESTAMPTZ
);
CREATE INDEX idx_user_goals_active ON user_goals (user_id, is_active);
CREATE INDEX idx_user_goals_completed ON user_goals (completed_at);

CREATE TABLE referral_codes (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  code VARCHAR(50) UNIQUE NOT NULL,
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_referral_codes_user ON referral_codes (user_id);

CREATE TABLE referrals (
  id BIGSERIAL PRIMARY KEY,
  referrer_user_id BIGINT NOT NULL REFERENCES users(id),
  referee_user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  referral_code VARCHAR(50) NOT NULL,
  email VARCHAR(255),
  status VARCHAR(10) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'converted', 'expired')),
  converted_at TIMESTAMPTZ,
  points_awarded_to_referrer INT NOT NULL DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_referrals_referrer_status ON referrals (referrer_user_id, status);
CREATE INDEX idx_referrals_code_email ON referrals (referral_code, email);
CREATE INDEX idx_referrals_converted ON referrals (converted_at);

CREATE TABLE custom_fields (
  id BIGSERIAL PRIMARY KEY,
  brand_id BIGINT NOT NULL REFERENCES brands(id),
  field_key VARCHAR(100) NOT NULL,
  field_label VARCHAR(255) NOT NULL,
  field_type VARCHAR(10) NOT NULL CHECK (field_type IN ('text', 'select', 'checkbox', 'radio')),
  field_options JSONB,
  is_required BOOLEAN NOT NULL DEFAULT FALSE,
  field_order INT NOT NULL DEFAULT 0,
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (field_key, brand_id)
);

CREATE TABLE user_custom_field_values (
  id BIGSERIAL PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  custom_field_id BIGINT NOT NULL REFERENCES custom_fields(id) ON DELETE CASCADE,
  field_value TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (user_id, custom_field_id)
);
"""


def upgrade() -> None:
    # asyncpg prepares each statement, and a prepared statement holds one command.
    for statement in re.split(r";\s*\n", UPGRADE):
        if statement.strip():
            op.execute(statement)
    for table in TABLES_WITH_UPDATED_AT:
        op.execute(
            f"CREATE TRIGGER {table}_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
        )


def downgrade() -> None:
    for table in reversed((
        "brands", "brand_write_keys", "users", "products", "ranks", "achievement_configs",
        "user_achievements", "user_action_log", "customer_io_event_queue", "user_ai_profiles",
        "customer_io_webhook_log", "wishlists", "user_goals", "referral_codes", "referrals",
        "custom_fields", "user_custom_field_values",
    )):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    op.execute("DROP FUNCTION IF EXISTS set_updated_at()")
