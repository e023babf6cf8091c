"""Segment Tracking API messages map onto our events."""

from __future__ import annotations

import pytest
from synergy_ingest.client_events import EventRejected
from synergy_ingest.segment import segment_to_client_event


def test_track_maps_event_properties_and_message_id() -> None:
    mapped = segment_to_client_event(
        {
            "type": "track",
            "userId": "user-9",
            "event": "wishlist_added",
            "properties": {"product_snapshot": {"identity": {"product_id": 45}}},
            "messageId": "m-1",
            "timestamp": "2024-05-22T18:35:12Z",
            "context": {"ip": "198.51.100.4", "userAgent": "curl/8"},
        }
    )
    assert mapped.client_event == {
        "type": "track",
        "identifiers": {"id": "user-9"},
        "event_id": "m-1",
        "timestamp": "2024-05-22T18:35:12Z",
        "name": "wishlist_added",
        "data": {"product_snapshot": {"identity": {"product_id": 45}}},
    }
    assert (mapped.client_ip, mapped.user_agent) == ("198.51.100.4", "curl/8")


def test_identify_takes_traits_and_anonymous_id() -> None:
    mapped = segment_to_client_event(
        {"type": "identify", "anonymousId": "anon-1", "traits": {"plan": "gold"}}
    )
    assert mapped.client_event["identifiers"] == {"anonymous_id": "anon-1"}
    assert mapped.client_event["data"] == {"plan": "gold"}


def test_page_and_screen_keep_their_name() -> None:
    mapped = segment_to_client_event({"userId": 12, "name": "Home", "properties": {"path": "/"}}, "page")
    assert mapped.client_event["type"] == "page"
    assert mapped.client_event["name"] == "Home"
    assert mapped.client_event["identifiers"] == {"id": "12"}


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "track", "event": "product_viewed"}, "userId"),
        ({"type": "group", "userId": "u", "groupId": "g"}, "type"),
        ({"type": "track", "userId": {"x": 1}}, "userId"),
        ({"type": "track", "userId": "u", "properties": []}, "properties"),
        ("not an object", "body"),
    ],
)
def test_bad_messages_name_the_field(message: object, field: str) -> None:
    with pytest.raises(EventRejected) as caught:
        segment_to_client_event(message)
    assert caught.value.field == field


def test_route_type_must_match() -> None:
    with pytest.raises(EventRejected):
        segment_to_client_event({"type": "identify", "userId": "u"}, "track")
