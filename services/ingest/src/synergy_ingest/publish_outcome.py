"""What a publish did to each record of a request: written, refused, or unknown. Pure: no I/O.

A record is *written* once Kafka acknowledged it (acks=all). It is *refused* when it provably never
reached a log: it was never handed to the producer, or the broker rejected it with an error that
means "not appended". Anything else (a timeout after the record may have been sent, a broken
connection mid-request) is *unknown*: the client is told so, with the event ids it may resend.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Not frozen: a frozen dataclass's __init__ costs three times as much, and one is built per event.
@dataclass(slots=True)
class OutgoingRecord:
    """One Kafka record, serialised once when the event is accepted."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


# librdkafka error codes after which the record is certainly not in the log.
# Negative codes are local to the client; positive ones are the broker's answer.
NOT_WRITTEN_ERROR_CODES = frozenset(
    {
        -190,  # _UNKNOWN_PARTITION
        -188,  # _UNKNOWN_TOPIC
        -184,  # _QUEUE_FULL
        2,  # INVALID_MSG (corrupt)
        3,  # UNKNOWN_TOPIC_OR_PART
        10,  # MSG_SIZE_TOO_LARGE
        17,  # TOPIC_EXCEPTION (invalid topic)
        18,  # RECORD_LIST_TOO_LARGE
        21,  # INVALID_REQUIRED_ACKS
        29,  # TOPIC_AUTHORIZATION_FAILED
        87,  # INVALID_RECORD
    }
)


def is_certainly_not_written(error_code: int) -> bool:
    return error_code in NOT_WRITTEN_ERROR_CODES


@dataclass
class PublishOutcome:
    """Indexes (into the request's list of envelopes) by what happened to them."""

    written: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    reason: str | None = None

    @property
    def all_written(self) -> bool:
        return not self.refused and not self.unknown


def settle(total: int, errors: dict[int, int | None], reason: str | None = None) -> PublishOutcome:
    """The outcome of `total` records from their delivery reports.

    `errors` maps an index to None (acknowledged) or to the error code of its failed delivery; an
    index without a report is unknown: the producer may still write it.
    """
    outcome = PublishOutcome(reason=reason)
    for index in range(total):
        if index not in errors:
            outcome.unknown.append(index)
            continue
        code = errors[index]
        if code is None:
            outcome.written.append(index)
        elif is_certainly_not_written(code):
            outcome.refused.append(index)
        else:
            outcome.unknown.append(index)
    return outcome
