"""From delivery reports to what the client is told: written, certainly not written, or unknown."""

from __future__ import annotations

from confluent_kafka import KafkaError
from synergy_ingest.publish_outcome import NOT_WRITTEN_ERROR_CODES, settle


def test_acknowledged_failed_and_missing_reports() -> None:
    outcome = settle(
        5,
        {
            0: None,
            1: KafkaError._MSG_TIMED_OUT,  # may have been sent: unknown
            2: KafkaError.MSG_SIZE_TOO_LARGE,  # the broker refused it: not written
            4: None,
        },
    )
    assert outcome.written == [0, 4]
    assert outcome.refused == [2]
    assert outcome.unknown == [1, 3]  # no report at all: the producer may still write it
    assert not outcome.all_written


def test_every_record_acknowledged() -> None:
    outcome = settle(3, {0: None, 1: None, 2: None})
    assert outcome.written == [0, 1, 2]
    assert outcome.all_written


def test_the_not_written_codes_are_librdkafkas() -> None:
    assert {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._QUEUE_FULL,
        KafkaError.INVALID_MSG,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
    } == NOT_WRITTEN_ERROR_CODES
    assert KafkaError._MSG_TIMED_OUT not in NOT_WRITTEN_ERROR_CODES
    assert KafkaError._TRANSPORT not in NOT_WRITTEN_ERROR_CODES
