"""What a client is told, from its events' validation and what Kafka did with them. Pure: no I/O.

A batch answers 202 (200 on the Segment route) when every event is valid and written, 207 when some
are written, 503 when valid events were sent and none is known written, and 422 (403 when every error
is a foreign brand) when none is valid.
"""

from __future__ import annotations

from typing import Any

from synergy_ingest.publish_outcome import PublishOutcome

UNKNOWN_TITLE = "Kafka did not acknowledge in time"
UNKNOWN_DETAIL = (
    "some events may have been written; resend them with these event_id values, which every consumer "
    "deduplicates"
)


def unwritten_problem(outcome: PublishOutcome, unknown_event_ids: list[str]) -> dict[str, Any]:
    """The problem+json body of a 503: with `outcome: unknown` and the ids when some may be written."""
    if outcome.unknown:
        return {
            "type": "about:blank",
            "title": UNKNOWN_TITLE,
            "status": 503,
            "detail": UNKNOWN_DETAIL,
            "outcome": "unknown",
            "event_ids": unknown_event_ids,
        }
    return {
        "type": "about:blank",
        "title": "Kafka unavailable",
        "status": 503,
        "detail": f"nothing was accepted; retry later ({outcome.reason})",
    }


def batch_answer(
    events: list[tuple[int, str]],
    errors: list[dict[str, Any]],
    forbidden: int,
    published: PublishOutcome | None,
    all_ok_status: int,
) -> tuple[int, dict[str, Any]]:
    """`events` are the valid events as (index in the batch, event_id), in the order they were published;
    `errors` the invalid ones ({index, field, message}); `published` what Kafka did with `events`."""
    accepted: list[dict[str, Any]] = []
    unwritten: list[dict[str, Any]] = []
    if published is not None:
        accepted = [{"index": events[p][0], "event_id": events[p][1]} for p in published.written]
        unwritten = sorted(
            [
                {"index": events[p][0], "event_id": events[p][1], "outcome": "not_written"}
                for p in published.refused
            ]
            + [
                {"index": events[p][0], "event_id": events[p][1], "outcome": "unknown"}
                for p in published.unknown
            ],
            key=lambda item: item["index"],
        )
    body: dict[str, Any] = {"accepted": accepted, "errors": errors}
    if unwritten:
        body["unwritten"] = unwritten
    if published is not None and not accepted:
        unknown_ids = [item["event_id"] for item in unwritten if item["outcome"] == "unknown"]
        return 503, {**unwritten_problem(published, unknown_ids), **body}
    if not errors and not unwritten:
        return all_ok_status, body
    if accepted:
        return 207, body
    status = 403 if forbidden == len(errors) else 422
    first = errors[0]
    return status, {
        "type": "about:blank",
        "title": "No event accepted",
        "status": status,
        "detail": f"batch[{first['index']}].{first['field']}: {first['message']}",
        "field": f"batch[{first['index']}].{first['field']}",
        **body,
    }
