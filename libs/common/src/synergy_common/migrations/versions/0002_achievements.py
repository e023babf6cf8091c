"""Achievements: default global achievement configs, hot reload of rules, the loyalty read model.

- Seeds the default achievements as global rows (brand_id NULL); a brand overrides one by inserting a
  row with the same achievement_key, or switches it off with is_active = FALSE.
- NOTIFY `synergy_achievement_rules` on any change to achievement_configs or ranks, so running
  achievements workers reload their rules without a restart.
- users.loyalty_state_version: the engine's state version last written, so replays never roll
  the points columns back.
- user_loyalty_state: the latest snapshot and progress per user, for GET /v1/users/{id}/loyalty.

Revision ID: 0002
Revises: 0001
"""

import json

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("achievements",)
depends_on = None


def seeded_achievements() -> list[dict]:
    def row(key, name, description, kind, criteria, points, badge, category, rarity):
        return {
            "achievement_key": key, "name": name, "description": description, "achievement_type": kind,
            "criteria": {"operator": ">=", "timeframe": None, **criteria},
            "rewards": {"points": points, "badge": badge, "multiplier": 1.0},
            "metadata": {"category": category, "rarity": rarity},
            "visibility": {"active": True, "show_progress": True},
        }

    # A literal copy of synergy_achievements.rules.DEFAULT_ACHIEVEMENT_ROWS as of this revision: a
    # migration must not change when service code does. tests/unit/achievements/test_rules.py asserts
    # the two are equal; a later change to the defaults needs a new migration (and the test updated).
    return [
        row("first_scan", "First Scan", "Complete your first product scan", "scan_count",
            {"metric": "scan_count", "value": 1}, 100, "first-scan-badge", "milestone", "common"),
        row("scans_10", "Regular Scanner", "Scan 10 products", "scan_count",
            {"metric": "scan_count", "value": 10}, 250, "scans-10-badge", "milestone", "uncommon"),
        row("scans_50", "Scan Master", "Scan 50 products", "scan_count",
            {"metric": "scan_count", "value": 50}, 1000, "scans-50-badge", "milestone", "rare"),
        row("scan_sprint", "Scan Sprint", "Scan 5 products within 7 days", "scan_count",
            {"metric": "scan_count", "value": 5, "timeframe": "7d"}, 300, "scan-sprint-badge",
            "engagement", "uncommon"),
        row("first_referral", "First Referral", "Refer a friend who completes their first scan",
            "referral_count", {"metric": "referral_count", "value": 1}, 200, "first-referral-badge",
            "social", "common"),
        row("wishlist_5", "Wish Maker", "Have 5 products on your wishlist", "wishlist_items",
            {"metric": "wishlist_items", "value": 5}, 50, "wishlist-5-badge", "engagement", "common"),
        row("first_redemption", "First Reward", "Redeem your first reward", "custom",
            {"metric": "redemption_count", "value": 1}, 100, "first-redemption-badge", "milestone", "common"),
        row("scan_streak_7", "7-Day Streak", "Scan on 7 days in a row", "custom",
            {"metric": "scan_streak_days", "value": 7}, 500, "streak-7-badge", "engagement", "rare"),
        row("achievement_hunter", "Achievement Hunter", "Unlock 5 achievements", "achievement_unlocked",
            {"metric": "achievements_unlocked", "value": 5}, 500, "hunter-badge", "meta", "epic"),
    ]


# One statement per op.execute: asyncpg prepares each, and a prepared statement holds one command.
UPGRADE = (
    "ALTER TABLE users ADD COLUMN loyalty_state_version BIGINT NOT NULL DEFAULT 0",
    """CREATE TABLE user_loyalty_state (
  user_id BIGINT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
  state_version BIGINT NOT NULL,
  user_snapshot JSONB NOT NULL,
  loyalty JSONB NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    """CREATE FUNCTION notify_achievement_rules() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('synergy_achievement_rules', TG_TABLE_NAME);
  RETURN NULL;
END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER achievement_configs_notify
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON achievement_configs
  FOR EACH STATEMENT EXECUTE FUNCTION notify_achievement_rules()""",
    """CREATE TRIGGER ranks_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ranks
  FOR EACH STATEMENT EXECUTE FUNCTION notify_achievement_rules()""",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)
    for row in seeded_achievements():
        values = ", ".join(
            "'" + (json.dumps(row[k]) if isinstance(row[k], dict) else str(row[k])).replace("'", "''") + "'"
            for k in ("name", "description", "achievement_key", "achievement_type", "criteria", "rewards",
                      "metadata", "visibility")
        )
        op.execute(
            "INSERT INTO achievement_configs (name, description, achievement_key, achievement_type, criteria,"
            f" rewards, metadata, visibility) VALUES ({values})"
            " ON CONFLICT (achievement_key, brand_id) DO NOTHING"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS achievement_configs_notify ON achievement_configs")
    op.execute("DROP TRIGGER IF EXISTS ranks_notify ON ranks")
    op.execute("DROP FUNCTION IF EXISTS notify_achievement_rules()")
    op.execute("DROP TABLE IF EXISTS user_loyalty_state")
    op.execute("ALTER TABLE users DROP COLUMN IF EXISTS loyalty_state_version")
    op.execute(
        "DELETE FROM achievement_configs WHERE brand_id IS NULL AND achievement_key IN ("
        + ", ".join(f"'{row['achievement_key']}'" for row in seeded_achievements()) + ")"
        " AND NOT EXISTS (SELECT 1 FROM user_achievements ua"
        " WHERE ua.achievement_config_id = achievement_configs.id)"
    )
