"""Customer.io metric names are free (new ones are stored as they come); they never become metric labels."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from tests.integration.insights.insights_harness import Insights, make_user
from tests.support import label_values, metric_label_sets
from tests.unit.insights.insights_webhook_examples import reporting_webhook

pytestmark = pytest.mark.integration


async def test_a_hundred_unknown_reporting_metrics_add_no_metric_label(insights: Insights, db: asyncpg.Pool) -> None:
    user = await make_user(db, insights.brand)
    warm_up = await insights.post(reporting_webhook("webhook", f"m_{secrets.token_hex(4)}", user))
    assert warm_up.status_code == 200, warm_up.text
    settled = metric_label_sets("synergy_insights_")
    metrics = [f"m_{secrets.token_hex(6)}" for _ in range(100)]
    for metric in metrics:
        answer = await insights.post(reporting_webhook("webhook", metric, user))
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "processed"
    stored = await db.fetchval(
        "SELECT count(*) FROM customer_io_webhook_log WHERE brand_id = $1 AND external_user_id = $2"
        " AND payload->>'metric' = ANY($3::text[])",
        insights.brand.pk,
        user,
        metrics,
    )
    assert stored == 100
    assert metric_label_sets("synergy_insights_") == settled
    assert not set(metrics) & label_values("synergy_")
    assert not {f"webhook_{m}" for m in metrics} & label_values("synergy_")
