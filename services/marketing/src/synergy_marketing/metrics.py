"""Prometheus metrics, named synergy_marketing_<what>_<unit>. Consumer lag is the runtime's
`synergy_streaming_consumer_lag{service="marketing"}`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from synergy_common.http import answers_counter

ANSWERS = answers_counter("synergy_marketing_requests_total")

TRIGGERS = Counter(
    "synergy_marketing_triggers_total",
    "Triggers decided, by brand, trigger type and outcome (sent, or suppressed_<reason>)",
    ["brand", "trigger", "outcome"],
)
TIMER_LATENESS = Histogram(
    "synergy_marketing_timer_lateness_seconds",
    "How late a timer fired: the scheduler's firing time minus the timer's due time",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400),
)
TIMERS_PENDING = Gauge("synergy_marketing_timers_pending", "Timers waiting in Postgres for their due time")
OLDEST_DUE_TIMER_LATENESS = Gauge(
    "synergy_marketing_oldest_due_timer_lateness_seconds",
    "How far past its due time the oldest due, unfired timer is (0 when none is due)",
)
TIMERS_FIRED = Counter(
    "synergy_marketing_timers_fired_total", "Timers claimed and decided by the scheduler, by kind", ["kind"]
)
EVENTS_APPLIED = Counter(
    "synergy_marketing_events_applied_total", "Events applied to the marketing state, by event name", ["name"]
)
QUEUE_ENGAGEMENT = Counter(
    "synergy_marketing_engagements_total",
    "Queue items first opened, clicked or converted, by brand, trigger and engagement",
    ["brand", "trigger", "engagement"],
)
RECOVERED_REVENUE = Counter(
    "synergy_marketing_recovered_revenue_total",
    "Totals (currency units, as sent) of orders a marketing message converted, by brand and trigger",
    ["brand", "trigger"],
)
KPI_RATE = Gauge(
    "synergy_marketing_kpi_ratio",
    "Seed 004's rates per brand and trigger over the retained queue (Postgres): open, click, conversion",
    ["brand", "trigger", "kpi"],
)
KPI_MESSAGES = Gauge(
    "synergy_marketing_kpi_messages",
    "Queue items per brand and trigger over the retained queue (Postgres): sent, opened, clicked, converted",
    ["brand", "trigger", "state"],
)
KPI_RECOVERED_REVENUE = Gauge(
    "synergy_marketing_kpi_recovered_revenue",
    "Recovered revenue per brand and trigger over the retained queue (Postgres), in order currency units",
    ["brand", "trigger"],
)
