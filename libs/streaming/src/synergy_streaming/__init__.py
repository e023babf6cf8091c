"""The one consumer runtime of every plain Kafka consumer (cio-sink, marketing, dispatcher, analytics).

A service supplies two plain functions and the runtime does the rest:
- `prepare(source) -> list[Work] | Skip | Reject`: what the record means (pure where it can be);
- `async deliver(target, items) -> outcome(s)`: the I/O, for a batch of one target.
A batch consumer may instead pass `prepare_runs(chunk: PolledChunk) -> list[Run | RejectRecord]`: one
`Run` per key of a poll chunk, the unit of work from then on; or one `Span` (`chunk.span(target)`): the
chunk's records in offset order as one unit, when deliver needs only the order, not a grouping by key.
"""

from synergy_streaming.brake import DlqBrake
from synergy_streaming.clock import FakeClock, MonotonicClock
from synergy_streaming.consumer import Consumer, KafkaConsumer
from synergy_streaming.dlq import DeadLetter, DeadLetterWriter
from synergy_streaming.message import (
    DELIVERED,
    BatchOutcome,
    Delivered,
    Failed,
    ItemOutcome,
    Partition,
    Record,
    Reject,
    RejectRecord,
    Retry,
    Run,
    Skip,
    Source,
    Span,
    SplitBatch,
    Work,
)
from synergy_streaming.rate_limit import RateLimits
from synergy_streaming.retry import RetryPolicy
from synergy_streaming.runtime import StreamConfig, StreamProcessor, is_retryable_error
from synergy_streaming.steps import PolledChunk, Undecodable, decode_envelope

__all__ = [
    "DELIVERED",
    "BatchOutcome",
    "Consumer",
    "DeadLetter",
    "DeadLetterWriter",
    "Delivered",
    "DlqBrake",
    "Failed",
    "FakeClock",
    "ItemOutcome",
    "KafkaConsumer",
    "MonotonicClock",
    "Partition",
    "PolledChunk",
    "RateLimits",
    "Record",
    "Reject",
    "RejectRecord",
    "Retry",
    "RetryPolicy",
    "Run",
    "Skip",
    "Source",
    "Span",
    "SplitBatch",
    "StreamConfig",
    "StreamProcessor",
    "Undecodable",
    "Work",
    "decode_envelope",
    "is_retryable_error",
]
