"""Marketing's msgspec decoder against the runtime's default one (orjson into a dict): the same records
refused with the same reason and detail, the same fields read from those accepted, the same decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from synergy_marketing.consumer import prepare_event, prepare_insight
from synergy_marketing.envelope import MarketingEnvelope, decode_marketing_envelope, envelope_of
from synergy_streaming import Partition, Record, Undecodable, Work, decode_envelope

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "seed_examples"
SEED_EVENTS = sorted(path for path in FIXTURES.glob("00[01]_*.json") if "_webhook_" not in path.name)
ENVELOPE = {"event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA", "type": "track", "brand_id": "7",
            "timestamp": "2025-01-14T10:00:00Z", "received_at": "2025-01-14T10:00:01Z", "source": "web"}
VIEW = {**ENVELOPE, "name": "product_viewed", "identifiers": {"id": "user_123"}}
ENGAGEMENT = {**ENVELOPE, "name": "email_opened", "identifiers": {"id": "user_123"},
              "data": {"metric": "opened", "trigger_event_id": "01JBBBBBBBBBBBBBBBBBBBBBBB"}}


def seed_envelopes() -> list[bytes]:
    """Each seed event (a client's payload) inside an envelope, as ingest publishes it."""
    return [orjson.dumps({**ENVELOPE, **orjson.loads(path.read_bytes())}) for path in SEED_EVENTS]


def with_fields(base: dict[str, Any], **fields: Any) -> bytes:
    return orjson.dumps({**base, **fields})


EDGE_CASES: list[bytes | None] = [
    # what the runtime refuses: not JSON, not an object, no usable event_id or brand_id, no value
    b"not json", b"[1, 2]", b"null", b'"text"', b"{}", b"", None, b"\xef\xbb\xbf{}",
    with_fields(VIEW, event_id=""), with_fields(VIEW, event_id=None), with_fields(VIEW, event_id=True),
    with_fields(VIEW, event_id=1.5), with_fields(VIEW, brand_id=""), with_fields(VIEW, brand_id=[7]),
    b'{"event_id": 100000000000000000000, "brand_id": "7"}',  # orjson: a float, so not an id
    b'{"event_id": "e", "brand_id": -100000000000000000000}',
    b'{"event_id": "e", "brand_id": "7", "received_at": NaN}', b'{"event_id": "e", "brand_id": "7"} x',
    b'{"event_id": "e", "brand_id": "7", "source": "\\ud800"}',  # a lone surrogate in a skipped field
    b'{"event_id": "e", "brand_id": "7", "source": "\xff"}',  # not UTF-8, in a skipped field
    b'{"event_id": "e", "brand_id": "7", "data": {"price": 1e400}}',
    *[b'{"event_id": "e", "brand_id": "7", "%s": %s%s}' % (field, b"[" * depth, b"]" * depth)
      for field in (b"source", b"data") for depth in (1024, 5000)],  # deeper than orjson reads
    # what the runtime accepts and marketing then decides on
    with_fields(VIEW, data={"product_id": "p1", "product_price": 9.99}),
    with_fields(VIEW, event_id=42, brand_id=7, data={"product_id": "p1"}),
    with_fields(VIEW, brand_id="abc", data={"product_id": "p1"}),
    with_fields(VIEW, type=None, data={"product_id": "p1"}), with_fields(VIEW, type=5, data={"product_id": "p1"}),
    with_fields(VIEW, data=None), with_fields(VIEW, data=[1]), with_fields(VIEW, data="x"),
    orjson.dumps({key: value for key, value in VIEW.items() if key != "type"}),
    orjson.dumps({key: value for key, value in VIEW.items() if key != "timestamp"}),
    with_fields(VIEW, timestamp=1736848800, data={"product_id": "p1"}),
    with_fields(VIEW, timestamp="2025-01-14T10:00:00", data={"product_id": "p1"}),
    with_fields(VIEW, timestamp="2025-01-14T12:00:00+02:00", data={"product_id": "p1"}),
    with_fields(VIEW, identifiers=["user_123"]), with_fields(VIEW, identifiers={}),
    with_fields(VIEW, identifiers={"id": "x" * 151}), with_fields(VIEW, identifiers={"id": 5}),
    with_fields(VIEW, identifiers={"anonymous_id": "a-1"}, data={"product_id": "p1"}),
    with_fields(VIEW, name=5), with_fields(VIEW, name=None, type="identify",
                                           identifiers={"id": "u", "anonymous_id": "a"}),
    with_fields(VIEW, name="cart_item_added", data={"product_id": "p", "quantity": 2, "price": 19.99}),
    with_fields(VIEW, name="cart_item_added", data={"product_id": "p", "quantity": -1}),
    with_fields(VIEW, name="order_completed", data={"order_id": "o", "total": 5, "items": [{"product_id": "p"}]}),
    with_fields(VIEW, name="watchlist_item_added", data={"product_id": "p", "price": 3}),
    with_fields(VIEW, name="product_price_changed", data={"product_id": "p", "price": 3}),
    with_fields(VIEW, name="product_viewed", data={"product_id": "p", "product_snapshot": {"price": 5}}),
    with_fields(VIEW, name="product_viewed", data={"product_id": "p", "product_name": "Café ✓"}),
    with_fields(VIEW, name="café", data={"product_id": "p"}),
    b'{"event_id": "e", "brand_id": "7", "identifiers": {"id": "u"}, "name": "cart_item_added",'
    b' "timestamp": "2025-01-14T10:00:00Z", "data": {"product_id": "p", "quantity": 100000000000000000000}}',
    b'{"event_id": "e", "brand_id": "7", "identifiers": {"id": "u"}, "name": "product_viewed",'
    b' "timestamp": "2025-01-14T10:00:00Z", "data": {"product_id": "p",'
    b' "product_snapshot": {"price": [-100000000000000000000]}}}',
    b'{"event_id": "e", "brand_id": "7", "identifiers": {"id": "u"}, "name": "product_viewed",'
    b' "name": "cart_item_added", "timestamp": "2025-01-14T10:00:00Z", "data": {"product_id": "p"}}',
    b'{"event\\u005fid": "e", "brand_id": "7", "identifiers": {"id": "u"}, "name": "product_viewed",'
    b' "timestamp": "2025-01-14T10:00:00Z", "data": {"product_id": "p"}}',
    orjson.dumps(ENGAGEMENT), with_fields(ENGAGEMENT, data=None),
    orjson.dumps({key: value for key, value in ENGAGEMENT.items() if key != "data"}),
    with_fields(ENGAGEMENT, data={"metric": "clicked", "trigger_event_id": "short"}),
    with_fields(ENGAGEMENT, timestamp="later"), with_fields(ENGAGEMENT, brand_id="x7"),
    # deep, but within orjson's limit (a data 1,000 deep is more than Python's == compares)
    *[b'{"event_id": "e", "brand_id": "7", "%s": %s%s}' % (field, b"[" * depth, b"]" * depth)
      for field, depth in ((b"source", 500), (b"source", 1023), (b"data", 500))],
]


def record(value: bytes | None) -> Record:
    return Record(Partition("synergy.events.v1", 0), 0, b"k", value, (), 0)  # type: ignore[arg-type]


def decoded(decode: Any, value: bytes | None) -> MarketingEnvelope | tuple[str, str]:
    try:
        envelope = decode(record(value))
    except Undecodable as exc:
        return (exc.reason, exc.detail)
    return envelope if type(envelope) is MarketingEnvelope else envelope_of(envelope)


def decision(answer: Any) -> Any:
    """A prepare answer as a comparable value (Work compares by identity)."""
    if type(answer) is list:
        return [(work.key, work.target, work.payload) for work in answer if type(work) is Work]
    return answer


@pytest.mark.parametrize("value", seed_envelopes() + EDGE_CASES)
def test_the_msgspec_decoder_refuses_reads_and_decides_as_the_default_one(value: bytes | None) -> None:
    by_default = decoded(decode_envelope, value)
    by_marketing = decoded(decode_marketing_envelope, value)
    assert by_marketing == by_default
    if type(by_default) is MarketingEnvelope:
        assert decision(prepare_event(by_marketing)) == decision(prepare_event(by_default))
        assert decision(prepare_insight(by_marketing)) == decision(prepare_insight(by_default))


def test_the_edge_cases_are_refused_and_accepted_as_written() -> None:
    """The cases above are what they are meant to be: the refused ones refused by the runtime's rules."""
    refused = [value for value in EDGE_CASES if type(decoded(decode_envelope, value)) is tuple]
    assert len(refused) == 25
    assert decoded(decode_marketing_envelope, b"[1, 2]") == ("malformed_message", "not a JSON object but list")
    assert decoded(decode_marketing_envelope, with_fields(VIEW, event_id="")) == ("malformed_message", "no event_id")
    assert decoded(decode_marketing_envelope, b'{"event_id": 100000000000000000000, "brand_id": "7"}') == (
        "malformed_message", "no event_id")


def test_the_seed_events_marketing_reads_are_prepared_and_the_others_skipped() -> None:
    names = {orjson.loads(value)["name"]: decision(prepare_event(decode_marketing_envelope(record(value))))
             for value in seed_envelopes()}
    assert {name: type(answer).__name__ for name, answer in names.items()} == {
        "product_scanned": "Skip", "referral_initiated": "Skip", "referral_converted": "Skip",
        "wishlist_item_added": "Skip", "wishlist_added": "Skip", "achievement_unlocked": "Skip",
        "reward_redeemed": "Skip", "user_session_started": "Skip", "user_session_ended": "Skip"}


def test_fields_marketing_does_not_read_are_not_decoded() -> None:
    envelope = decode_marketing_envelope(record(with_fields(VIEW, context={"ip": "1.2.3.4"}, data={})))
    assert msgspec.structs.asdict(envelope) == {
        "event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA", "brand_id": "7", "type": "track", "name": "product_viewed",
        "identifiers": {"id": "user_123"}, "timestamp": "2025-01-14T10:00:00Z", "data": {}}
