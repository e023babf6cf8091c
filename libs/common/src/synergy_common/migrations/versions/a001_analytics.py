"""Analytics: the action log partitioned by month on event time, and seed 003's read models made multi-brand.

user_action_log (seed 003 §4.1) is replaced: nothing wrote it before this revision, and a table cannot be
turned into a partitioned one in place. The new one is declaratively range-partitioned by month on
`occurred_at` (the event's own timestamp), with the primary key (event_id, occurred_at), so a redelivered
event is written once. `action_type` takes every event name (no CHECK against seed 003's eight). Users are
the events' own identity (brand_id, external id), so the log needs no users row per event.

Partitions are made by `analytics_ensure_partitions(from, to)` (the service calls it ahead of time and for
any month a batch needs) and dropped, a partition at a time, by `analytics_drop_partitions_before(ts)`.
Both take an advisory lock, so replicas never race on the DDL.

Read models: referral_codes are unique per brand (not globally); a referral is pending before its referee
is known (referee nullable); wishlists and goals are keyed by the event's wishlist item id, and the product
is the event's product reference (products rows are optional). Each carries the event ids that made it, so
a redelivery changes nothing.

Revision ID: a001_analytics
Revises: 0001
"""

from alembic import op

revision = "a001_analytics"
down_revision = "0001"
branch_labels = ("analytics",)
depends_on = None

STATEMENTS = (
    "ALTER TABLE user_action_log RENAME TO user_action_log_0001",
    "ALTER TABLE user_action_log_0001 RENAME CONSTRAINT user_action_log_pkey TO user_action_log_0001_pkey",
    """
    CREATE TABLE user_action_log (
      event_id VARCHAR(100) NOT NULL,
      occurred_at TIMESTAMPTZ NOT NULL,
      brand_id BIGINT NOT NULL,
      user_id VARCHAR(150),
      anonymous_id VARCHAR(150),
      event_type VARCHAR(16) NOT NULL DEFAULT 'track',
      action_type VARCHAR(100) NOT NULL,
      engine_event BOOLEAN NOT NULL DEFAULT FALSE,
      action_data JSONB,
      product_id VARCHAR(100),
      points_awarded INT NOT NULL DEFAULT 0,
      ip_address VARCHAR(45),
      user_agent TEXT,
      source_topic VARCHAR(255),
      received_at TIMESTAMPTZ,
      created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
      PRIMARY KEY (event_id, occurred_at)
    ) PARTITION BY RANGE (occurred_at)
    """,
    # Funnels and first-use scans: one brand's events of a name, in time order, with the user.
    """CREATE INDEX idx_action_log_brand_action_time ON user_action_log
       (brand_id, action_type, occurred_at) INCLUDE (user_id)""",
    # Strict funnels and per-user reads: one user's events in time order.
    "CREATE INDEX idx_action_log_brand_user_time ON user_action_log (brand_id, user_id, occurred_at)",
    """
    CREATE FUNCTION analytics_ensure_partitions(from_ts timestamptz, to_ts timestamptz) RETURNS integer AS $$
    DECLARE
      month date := date_trunc('month', from_ts AT TIME ZONE 'UTC')::date;
      last date := date_trunc('month', to_ts AT TIME ZONE 'UTC')::date;
      made integer := 0;
      name text;
    BEGIN
      PERFORM pg_advisory_xact_lock(hashtext('synergy_analytics_partitions'));
      WHILE month <= last LOOP
        name := format('user_action_log_%s', to_char(month, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
          EXECUTE format(
            'CREATE TABLE %I PARTITION OF user_action_log FOR VALUES FROM (%L) TO (%L)',
            name, (month::timestamp AT TIME ZONE 'UTC'),
            ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
          made := made + 1;
        END IF;
        month := (month + interval '1 month')::date;
      END LOOP;
      RETURN made;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE FUNCTION analytics_drop_partitions_before(cutoff timestamptz) RETURNS SETOF text AS $$
    DECLARE
      part record;
    BEGIN
      PERFORM pg_advisory_xact_lock(hashtext('synergy_analytics_partitions'));
      FOR part IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
                 AS upper_bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'user_action_log'::regclass
        ORDER BY c.relname
      LOOP
        IF part.upper_bound <= cutoff THEN
          EXECUTE format('DROP TABLE %I', part.relname);
          RETURN NEXT part.relname;
        END IF;
      END LOOP;
    END $$ LANGUAGE plpgsql
    """,
    # The old table's rows, if a deployment wrote any by hand, move over with their user's identity.
    """
    DO $$
    DECLARE first_at timestamptz; last_at timestamptz;
    BEGIN
      SELECT min(created_at), max(created_at) INTO first_at, last_at FROM user_action_log_0001;
      IF first_at IS NOT NULL THEN
        PERFORM analytics_ensure_partitions(first_at, last_at);
        INSERT INTO user_action_log (event_id, occurred_at, brand_id, user_id, action_type, action_data,
                                     product_id, points_awarded, ip_address, user_agent, received_at)
        SELECT 'log0001-' || l.id, l.created_at, u.brand_id, u.external_id, l.action_type, l.action_data,
               l.product_id::text, l.points_awarded, l.ip_address, l.user_agent, l.created_at
        FROM user_action_log_0001 l JOIN users u ON u.id = l.user_id;
      END IF;
    END $$
    """,
    "DROP TABLE user_action_log_0001",
    "SELECT analytics_ensure_partitions(now() - interval '1 month', now() + interval '4 months')",
    # --- read models ---------------------------------------------------------------------------------
    "ALTER TABLE referral_codes ADD COLUMN brand_id BIGINT REFERENCES brands(id)",
    "ALTER TABLE referral_codes ADD COLUMN source_event_id VARCHAR(100)",
    "ALTER TABLE referral_codes DROP CONSTRAINT referral_codes_code_key",
    "CREATE UNIQUE INDEX uq_referral_codes_brand_code ON referral_codes (brand_id, code)",
    "ALTER TABLE referrals ALTER COLUMN referee_user_id DROP NOT NULL",
    "ALTER TABLE referrals ADD COLUMN brand_id BIGINT REFERENCES brands(id)",
    "ALTER TABLE referrals ADD COLUMN initiated_event_id VARCHAR(100)",
    "ALTER TABLE referrals ADD COLUMN converted_event_id VARCHAR(100)",
    "CREATE UNIQUE INDEX uq_referrals_initiated_event ON referrals (initiated_event_id)",
    "CREATE UNIQUE INDEX uq_referrals_converted_event ON referrals (converted_event_id)",
    "CREATE INDEX idx_referrals_brand_code ON referrals (brand_id, referral_code, status)",
    "ALTER TABLE wishlists ALTER COLUMN product_id DROP NOT NULL",
    "ALTER TABLE wishlists ADD COLUMN wishlist_item_id VARCHAR(100)",
    "ALTER TABLE wishlists ADD COLUMN product_ref VARCHAR(100)",
    "ALTER TABLE wishlists ADD COLUMN points_needed BIGINT",
    "ALTER TABLE wishlists ADD COLUMN referrals_needed INT",
    "ALTER TABLE wishlists ADD COLUMN source_event_id VARCHAR(100)",
    "ALTER TABLE wishlists DROP CONSTRAINT wishlists_user_id_product_id_key",
    "CREATE UNIQUE INDEX uq_wishlists_user_item ON wishlists (user_id, wishlist_item_id)",
    "ALTER TABLE user_goals ADD COLUMN wishlist_item_id VARCHAR(100)",
    "ALTER TABLE user_goals ADD COLUMN product_ref VARCHAR(100)",
    "ALTER TABLE user_goals ADD COLUMN target_referrals INT",
    "ALTER TABLE user_goals ADD COLUMN current_referrals INT NOT NULL DEFAULT 0",
    "ALTER TABLE user_goals ADD COLUMN balance_as_of TIMESTAMPTZ",
    "CREATE UNIQUE INDEX uq_user_goals_user_item ON user_goals (user_id, wishlist_item_id)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for statement in (
        "DROP INDEX uq_user_goals_user_item",
        *(f"ALTER TABLE user_goals DROP COLUMN {c}" for c in (
            "wishlist_item_id", "product_ref", "target_referrals", "current_referrals", "balance_as_of")),
        "DROP INDEX uq_wishlists_user_item",
        "DELETE FROM wishlists WHERE product_id IS NULL",
        "ALTER TABLE wishlists ALTER COLUMN product_id SET NOT NULL",
        *(f"ALTER TABLE wishlists DROP COLUMN {c}" for c in (
            "wishlist_item_id", "product_ref", "points_needed", "referrals_needed", "source_event_id")),
        "ALTER TABLE wishlists ADD CONSTRAINT wishlists_user_id_product_id_key UNIQUE (user_id, product_id)",
        "DELETE FROM referrals WHERE referee_user_id IS NULL",
        "ALTER TABLE referrals ALTER COLUMN referee_user_id SET NOT NULL",
        *(f"ALTER TABLE referrals DROP COLUMN {c}" for c in (
            "brand_id", "initiated_event_id", "converted_event_id")),
        "DROP INDEX uq_referral_codes_brand_code",
        *(f"ALTER TABLE referral_codes DROP COLUMN {c}" for c in ("brand_id", "source_event_id")),
        "ALTER TABLE referral_codes ADD CONSTRAINT referral_codes_code_key UNIQUE (code)",
        "DROP TABLE user_action_log",
        "DROP FUNCTION analytics_ensure_partitions(timestamptz, timestamptz)",
        "DROP FUNCTION analytics_drop_partitions_before(timestamptz)",
        """
        CREATE TABLE user_action_log (
          id BIGSERIAL PRIMARY KEY,
          user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
          action_type VARCHAR(32) NOT NULL,
          action_data JSONB,
          product_id BIGINT REFERENCES products(id),
          points_awarded INT NOT NULL DEFAULT 0,
          ip_address VARCHAR(45),
          user_agent TEXT,
          created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """,
    ):
        op.execute(statement)
