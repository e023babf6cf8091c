"""Marketing: recording a batch's event ids costs about a third less in Postgres.

Idempotency by event id is one row per event in marketing_applied_events, written by marketing_load_batch
for every event of every batch: the largest per-event cost of the consumer in Postgres (the bench's batches
hold ~8 events per person, so per-person reads and writes are shared and this is not). Two changes, each
measured as the backend's CPU for batches of 4,000 new ids into a table of 200,000 (µs a row, medians of
two rounds):

- the ids an index probe finds absent are inserted with a plain INSERT (4.8-5.3 -> 3.8-4.7 µs a row with
  ON CONFLICT DO NOTHING's speculative insertion gone). Exactness is kept: an id being recorded at the
  same moment by another transaction (a catalog event during a rebalance; a person's events are already
  serialised by the advisory lock taken before) makes the insert fail with unique_violation, and then the
  ON CONFLICT form of before runs instead, in the same transaction (the failed attempt is a subtransaction,
  rolled back alone). The consumer sends each (brand, event id) once (a duplicate in one batch would also
  only take that path);
- idx_marketing_applied_events_at, read only by the 90-day purge (`applied_at < now() - interval`), is a
  BRIN index instead of a btree: the rows are appended in applied_at order, so block ranges summarise it
  exactly enough for the purge, and an insert no longer adds an entry to a second btree (3.9-5.1 ->
  3.4-3.9 µs a row with both changes).

The function keeps its signature and its answer; everything after the ids is as in m020.

Revision ID: m040_marketing_applied_ids
Revises: m030_marketing_save_row_arrays
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "m040_marketing_applied_ids"
down_revision = "m030_marketing_save_row_arrays"
branch_labels = None
depends_on = None

LOAD = """
CREATE OR REPLACE FUNCTION marketing_load_batch(
  p_locks text[],
  p_event_brands bigint[], p_event_ids text[],
  p_person_brands bigint[], p_persons text[],
  p_watch_brands bigint[], p_watch_users text[], p_watch_products text[],
  p_catalog_brands bigint[], p_catalog_products text[],
  p_product_brands bigint[], p_products text[]
) RETURNS json
LANGUAGE plpgsql
SET enable_seqscan = off
SET TimeZone = 'UTC'
AS $fn$
DECLARE
  fresh_events json;
  result json;
BEGIN
  -- Serialises batches (of any replica) that touch the same person, in one order (no deadlock).
  PERFORM pg_advisory_xact_lock(h)
    FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest(p_locks) k ORDER BY 1) locks;
  -- A new statement, so a new snapshot: what the batches we waited for committed is seen. The ids not
  -- applied before are recorded; null when every event is new (the common case), else the new ones.
  BEGIN
    WITH fresh AS (
      INSERT INTO marketing_applied_events (brand_id, event_id)
      SELECT k.brand_id, k.event_id FROM unnest(p_event_brands, p_event_ids) AS k(brand_id, event_id)
      WHERE NOT EXISTS (
        SELECT 1 FROM marketing_applied_events a
        WHERE a.brand_id = k.brand_id AND a.event_id = k.event_id::bpchar OFFSET 0)
      RETURNING brand_id, event_id
    )
    SELECT CASE WHEN count(*) = cardinality(p_event_ids) THEN NULL
                ELSE coalesce(json_agg(json_build_array(brand_id, event_id)), '[]') END
    INTO fresh_events FROM fresh;
  EXCEPTION WHEN unique_violation THEN
    -- another transaction recorded one of these ids meanwhile (or one came twice): exact, as before
    WITH fresh AS (
      INSERT INTO marketing_applied_events (brand_id, event_id)
      SELECT * FROM unnest(p_event_brands, p_event_ids)
      ON CONFLICT DO NOTHING RETURNING brand_id, event_id
    )
    SELECT CASE WHEN count(*) = cardinality(p_event_ids) THEN NULL
                ELSE coalesce(json_agg(json_build_array(brand_id, event_id)), '[]') END
    INTO fresh_events FROM fresh;
  END;
  WITH persons AS (
    SELECT * FROM unnest(p_person_brands, p_persons) AS k(brand_id, person)
  )
  SELECT json_build_object(
    'fresh', fresh_events,
    'views', (
      SELECT json_agg(json_build_array(
        x.brand_id, x.person, x.product_id, x.first_viewed_at, x.last_viewed_at, x.product_name,
        x.product_price::text, x.product_category, x.image_url, x.view_id, x.session_id, x.view_duration,
        x.referrer, x.device_type, x.browser, x.view_count, x.browse_views, x.browse_started_at,
        x.browse_exited_at, x.added_to_cart, x.added_to_cart_at, x.purchased, x.purchased_at))
      FROM persons k CROSS JOIN LATERAL (
        SELECT * FROM product_views x WHERE x.brand_id = k.brand_id AND x.person = k.person OFFSET 0) x),
    'carts', (
      SELECT json_agg(json_build_array(
        x.brand_id, x.person, x.cart_id, x.currency, x.last_changed_at, x.last_order_at))
      FROM persons k CROSS JOIN LATERAL (
        SELECT * FROM carts x WHERE x.brand_id = k.brand_id AND x.person = k.person OFFSET 0) x),
    'items', (
      SELECT json_agg(json_build_array(
        x.brand_id, x.person, x.product_id, x.quantity, x.added_at, x.product_name, x.sku,
        x.product_category, x.price::text, x.image_url))
      FROM persons k CROSS JOIN LATERAL (
        SELECT * FROM cart_items x WHERE x.brand_id = k.brand_id AND x.person = k.person OFFSET 0) x),
    'timers', (
      SELECT json_agg(json_build_array(x.timer_id, x.brand_id, x.person, x.trigger, x.subject, x.due_at))
      FROM persons k CROSS JOIN LATERAL (
        SELECT * FROM marketing_timers x WHERE x.brand_id = k.brand_id AND x.person = k.person
          AND x.trigger IN ('cart_abandoned', 'browse_abandoned') AND x.subject = '' OFFSET 0) x),
    'watches', (
      SELECT json_agg(json_build_array(
        x.brand_id, x.user_id, x.product_id, x.watched_at, x.product_name, x.product_category, x.image_url,
        x.current_price::text, x.original_price::text, x.target_price::text, x.currency, x.in_stock,
        x.notify_on_price_drop, x.notify_on_restock, x.notified_price_drop, x.notified_restock))
      FROM (
        SELECT x.* FROM unnest(p_watch_brands, p_watch_users, p_watch_products)
          AS k(brand_id, user_id, product_id)
        CROSS JOIN LATERAL (SELECT * FROM watch_list x WHERE x.brand_id = k.brand_id
          AND x.user_id = k.user_id AND x.product_id = k.product_id OFFSET 0) x
        UNION
        SELECT x.* FROM unnest(p_catalog_brands, p_catalog_products) AS k(brand_id, product_id)
        CROSS JOIN LATERAL (SELECT * FROM watch_list x WHERE x.brand_id = k.brand_id
          AND x.product_id = k.product_id OFFSET 0) x
      ) x),
    'products', (
      SELECT json_agg(json_build_array(
        x.brand_id, x.product_id, x.changed_at, x.product_name, x.price::text, x.in_stock))
      FROM unnest(p_product_brands, p_products) AS k(brand_id, product_id) CROSS JOIN LATERAL (
        SELECT * FROM marketing_products x
        WHERE x.brand_id = k.brand_id AND x.product_id = k.product_id OFFSET 0) x)
  ) INTO result;
  RETURN result;
END
$fn$
"""


def upgrade() -> None:
    op.execute(LOAD)
    op.execute("DROP INDEX IF EXISTS idx_marketing_applied_events_at")
    op.execute("CREATE INDEX idx_marketing_applied_events_at ON marketing_applied_events USING brin (applied_at)")


def downgrade() -> None:
    # m020's function back, from m020 itself (an applied migration is never edited, so it is what ran).
    spec = importlib.util.spec_from_file_location(
        "m020_marketing_batch_functions", Path(__file__).with_name("m020_marketing_batch_functions.py")
    )
    assert spec is not None and spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(previous.LOAD.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute("DROP INDEX IF EXISTS idx_marketing_applied_events_at")
    op.execute("CREATE INDEX idx_marketing_applied_events_at ON marketing_applied_events (applied_at)")
