"""Prometheus metrics of the runtime, labelled by the consuming service: synergy_streaming_<what>."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("synergy_streaming_consumed_total", "Records consumed", ["service", "topic"])
SETTLED = Counter(
    "synergy_streaming_settled_total", "Work items settled, by outcome", ["service", "outcome"]
)
RETRIED = Counter("synergy_streaming_retried_total", "Work items scheduled for another attempt",
                  ["service", "reason"])
DEAD_LETTERS = Counter("synergy_streaming_dead_letters_total", "Records written to the DLQ",
                       ["service", "reason"])
DLQ_WRITE_FAILURES = Counter("synergy_streaming_dlq_write_failures_total",
                             "Dead-letter writes that failed and were retried", ["service"])
DLQ_BRAKE = Gauge("synergy_streaming_dlq_brake_engaged",
                  "1 while the DLQ brake holds back dead letters and consumption", ["service"])
CONSUMER_LAG = Gauge("synergy_streaming_consumer_lag", "Messages behind the partition's end (committed)",
                     ["service", "topic", "partition"])
BUFFERED = Gauge("synergy_streaming_buffered_messages", "Records consumed and not yet committed", ["service"])
PAUSED = Gauge("synergy_streaming_paused", "1 while consumption is paused by backpressure", ["service"])
PREPARE_RETRIES = Counter("synergy_streaming_prepare_retries_total",
                          "Retryable failures of a prepare step (a database away, say)", ["service"])
BATCH_SIZE = Histogram("synergy_streaming_batch_size_items", "Work items per delivered batch", ["service"],
                       buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000))
DELIVER_SECONDS = Histogram("synergy_streaming_deliver_duration_seconds", "Time of one deliver call",
                            ["service"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15))
COMMITS = Counter("synergy_streaming_commits_total", "Offset commits", ["service", "result"])
