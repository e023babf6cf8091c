"""Marketing: the consumer's save function reads views and cart lines as positional JSON arrays.

marketing_save_batch (m020) took every view and cart line as a JSON object with its column names as keys:
two thirds of the document's bytes were the keys, repeated for every row, and parsing that document into
jsonb was the single largest cost of the save (about 13 ms for the 1.3 MB of a batch of 2,000 new persons,
6.5 µs an event, on this machine). The rows now travel as arrays in the column order of store.VIEW_COLUMNS
and store.ITEM_COLUMNS (cart lines stay keyed by product); everything else is unchanged. The function's
signature is the same and the consumer and the function change together: a batch from a consumer of the
previous version (objects) fails here on product_views.product_id's NOT NULL, writes nothing and is retried
by that consumer until the new one takes over; nothing is half-written.

Revision ID: m030_marketing_save_row_arrays
Revises: m020_marketing_batch_functions
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "m030_marketing_save_row_arrays"
down_revision = "m020_marketing_batch_functions"
branch_labels = None
depends_on = None

SAVE = """
CREATE OR REPLACE FUNCTION marketing_save_batch(p jsonb) RETURNS json
LANGUAGE plpgsql
SET enable_seqscan = off
AS $fn$
DECLARE
  converted json;
BEGIN
  -- The touched persons' views are replaced.
  DELETE FROM product_views WHERE ctid = ANY(ARRAY(
    SELECT x.ctid FROM jsonb_to_recordset(p->'touched') AS k(brand_id bigint, person text)
    CROSS JOIN LATERAL (SELECT ctid FROM product_views x
      WHERE x.brand_id = k.brand_id AND x.person = k.person OFFSET 0) x));
  INSERT INTO product_views (
    brand_id, person, user_id, product_id, first_viewed_at, last_viewed_at, product_name, product_price,
    product_category, image_url, view_id, session_id, view_duration, referrer, device_type, browser,
    view_count, browse_views, browse_started_at, browse_exited_at, added_to_cart, added_to_cart_at,
    purchased, purchased_at)
  SELECT k.brand_id, k.person, k.user_id, v->>0, (v->>1)::timestamptz, (v->>2)::timestamptz, v->>3,
    (v->>4)::numeric, v->>5, v->>6, v->>7, v->>8, (v->>9)::int, v->>10, v->>11, v->>12, (v->>13)::int,
    (v->>14)::int, (v->>15)::timestamptz, (v->>16)::timestamptz, (v->>17)::bool, (v->>18)::timestamptz,
    (v->>19)::bool, (v->>20)::timestamptz
  FROM jsonb_to_recordset(p->'persons') AS k(brand_id bigint, person text, user_id text, views jsonb)
  CROSS JOIN LATERAL jsonb_array_elements(k.views) AS v
  WHERE k.views IS NOT NULL;

  -- A touched person without a cart any more loses it (its lines go with it: ON DELETE CASCADE); the
  -- others' carts and lines are upserted and the lines no longer in a cart deleted, so an unchanged line
  -- costs no cascade and no foreign-key check.
  DELETE FROM carts WHERE ctid = ANY(ARRAY(
    SELECT x.ctid FROM jsonb_to_recordset(p->'cartless') AS k(brand_id bigint, person text)
    CROSS JOIN LATERAL (SELECT ctid FROM carts x
      WHERE x.brand_id = k.brand_id AND x.person = k.person OFFSET 0) x));
  INSERT INTO carts (brand_id, person, cart_id, currency, last_changed_at, last_order_at)
  SELECT k.brand_id, k.person, c.cart_id, c.currency, c.last_changed_at, c.last_order_at
  FROM jsonb_to_recordset(p->'persons') AS k(brand_id bigint, person text, cart jsonb)
  CROSS JOIN LATERAL jsonb_to_record(k.cart) AS c(
    cart_id text, currency text, last_changed_at timestamptz, last_order_at timestamptz)
  WHERE k.cart IS NOT NULL
  ON CONFLICT (brand_id, person) DO UPDATE SET cart_id = EXCLUDED.cart_id, currency = EXCLUDED.currency,
    last_changed_at = EXCLUDED.last_changed_at, last_order_at = EXCLUDED.last_order_at,
    updated_at = now();
  DELETE FROM cart_items WHERE ctid = ANY(ARRAY(
    SELECT x.ctid FROM jsonb_to_recordset(p->'persons') AS k(brand_id bigint, person text, cart jsonb)
    CROSS JOIN LATERAL (SELECT ctid, product_id FROM cart_items x
      WHERE x.brand_id = k.brand_id AND x.person = k.person OFFSET 0) x
    WHERE k.cart IS NOT NULL AND NOT jsonb_exists(k.cart->'items', x.product_id)));
  INSERT INTO cart_items (
    brand_id, person, product_id, quantity, added_at, product_name, sku, product_category, price, image_url)
  SELECT k.brand_id, k.person, e.item->>0, (e.item->>1)::int, (e.item->>2)::timestamptz, e.item->>3,
    e.item->>4, e.item->>5, (e.item->>6)::numeric, e.item->>7
  FROM jsonb_to_recordset(p->'persons') AS k(brand_id bigint, person text, cart jsonb)
  CROSS JOIN LATERAL jsonb_each(k.cart->'items') AS e(product, item)
  WHERE k.cart IS NOT NULL
  ON CONFLICT (brand_id, person, product_id) DO UPDATE SET quantity = EXCLUDED.quantity,
    added_at = EXCLUDED.added_at, product_name = EXCLUDED.product_name, sku = EXCLUDED.sku,
    product_category = EXCLUDED.product_category, price = EXCLUDED.price, image_url = EXCLUDED.image_url;

  -- Changed watches are replaced (a removed one is only deleted).
  DELETE FROM watch_list WHERE ctid = ANY(ARRAY(
    SELECT x.ctid FROM jsonb_to_recordset(p->'watch_keys') AS k(brand_id bigint, person text, subject text)
    CROSS JOIN LATERAL (SELECT ctid FROM watch_list x WHERE x.brand_id = k.brand_id
      AND x.user_id = k.person AND x.product_id = k.subject OFFSET 0) x));
  INSERT INTO watch_list (
    brand_id, user_id, product_id, watched_at, product_name, product_category, image_url, current_price,
    original_price, target_price, currency, in_stock, notify_on_price_drop, notify_on_restock,
    notified_price_drop, notified_restock)
  SELECT k.brand_id, w.*
  FROM jsonb_to_recordset(p->'watches') AS k(brand_id bigint, watch jsonb)
  CROSS JOIN LATERAL jsonb_to_record(k.watch) AS w(
    person text, product_id text, watched_at timestamptz, product_name text, product_category text,
    image_url text, current_price numeric, original_price numeric, target_price numeric, currency text,
    in_stock bool, notify_on_price_drop bool, notify_on_restock bool, notified_price_drop bool,
    notified_restock bool);

  INSERT INTO marketing_products (brand_id, product_id, product_name, price, in_stock, changed_at)
  SELECT k.brand_id, r.product_id, r.product_name, r.price, r.in_stock, r.changed_at
  FROM jsonb_to_recordset(p->'products') AS k(brand_id bigint, product jsonb)
  CROSS JOIN LATERAL jsonb_to_record(k.product) AS r(
    product_id text, changed_at timestamptz, product_name text, price numeric, in_stock bool)
  ON CONFLICT (brand_id, product_id) DO UPDATE SET product_name = EXCLUDED.product_name,
    price = EXCLUDED.price, in_stock = EXCLUDED.in_stock, changed_at = EXCLUDED.changed_at;

  INSERT INTO marketing_identities (brand_id, anonymous_id, user_id, linked_at)
  SELECT * FROM jsonb_to_recordset(p->'identities')
    AS k(brand_id bigint, anonymous_id text, user_id text, linked_at timestamptz)
  ON CONFLICT DO NOTHING;

  -- Deadlines: ones no longer called for are deleted, a removed watch's pending ones dropped, new and
  -- moved ones written (a moved one is armed again; an unchanged one keeps its state).
  DELETE FROM marketing_timers WHERE timer_id = ANY(ARRAY(
    SELECT jsonb_array_elements_text(p->'unwanted_timers')::bigint));
  DELETE FROM marketing_timers WHERE ctid = ANY(ARRAY(
    SELECT x.ctid FROM jsonb_to_recordset(p->'dropped_watch_timers')
      AS k(brand_id bigint, person text, subject text)
    CROSS JOIN LATERAL (SELECT ctid FROM marketing_timers x WHERE x.brand_id = k.brand_id
      AND x.person = k.person AND x.subject = k.subject
      AND x.trigger IN ('price_dropped', 'back_in_stock') AND x.fired_at IS NULL OFFSET 0) x));
  INSERT INTO marketing_timers (brand_id, person, trigger, subject, due_at, details)
  SELECT * FROM jsonb_to_recordset(p->'timers')
    AS k(brand_id bigint, person text, trigger text, subject text, due_at timestamptz, details jsonb)
  ON CONFLICT (brand_id, person, trigger, subject) DO UPDATE SET due_at = EXCLUDED.due_at,
    details = EXCLUDED.details, fired_at = NULL
  WHERE marketing_timers.due_at IS DISTINCT FROM EXCLUDED.due_at
    OR marketing_timers.details IS DISTINCT FROM EXCLUDED.details;

  -- Each order converts the sent item its ref names, else the user's latest sent item within the
  -- conversion window before it.
  WITH orders AS (
    SELECT * FROM jsonb_to_recordset(p->'orders') AS o(
      brand_id bigint, user_id text, ref text, order_id text, ordered_at timestamptz, total numeric)
  ), picked AS (
    SELECT DISTINCT ON (q.queue_id) q.queue_id, o.order_id, o.ordered_at, o.total
    FROM orders o
    JOIN LATERAL (
      SELECT m.queue_id, m.sent_at FROM marketing_queue m
      WHERE m.brand_id = o.brand_id AND m.status = 'sent'
        AND ((o.ref IS NOT NULL AND m.queue_id = o.ref)
             OR (m.user_id = o.user_id AND m.sent_at <= o.ordered_at + interval '5 minutes'
                 AND m.sent_at >= o.ordered_at
                                  - (p->>'conversion_window_seconds')::float8 * interval '1 second'))
      ORDER BY (m.queue_id = o.ref) DESC NULLS LAST, m.sent_at DESC
      LIMIT 1
    ) q ON TRUE
    ORDER BY q.queue_id, o.ordered_at
  ), updated AS (
    UPDATE marketing_queue m SET status = 'converted', converted = TRUE, converted_at = pk.ordered_at,
           conversion_order_id = pk.order_id, conversion_revenue = pk.total
    FROM picked pk WHERE m.queue_id = pk.queue_id AND NOT m.converted
    RETURNING m.brand_id, m.event_name, m.conversion_revenue
  )
  SELECT json_agg(json_build_array(brand_id, event_name, conversion_revenue::text)) INTO converted
  FROM updated;
  RETURN converted;
END
$fn$
"""


def upgrade() -> None:
    op.execute(SAVE)


def downgrade() -> None:
    # m020's function back, from m020 itself (an applied migration is never edited, so it is what ran).
    spec = importlib.util.spec_from_file_location(
        "m020_marketing_batch_functions", Path(__file__).with_name("m020_marketing_batch_functions.py")
    )
    assert spec is not None and spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(previous.SAVE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
