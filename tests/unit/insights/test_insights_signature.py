import hashlib
import hmac

import pytest
from synergy_insights.signature import SignatureRejected, SignatureVerifier, expected_signature

KEY = "cio-test-signing-key"
TIMESTAMP = "1700000000"
BODY = (
    b'{"event_id":"01J0Z8Y5B6Q8W2T3R4V5X6Y7Z8","object_type":"email","metric":"opened",'
    b'"timestamp":1700000000,"data":{"customer_id":"user-123"}}'
)
# Computed with `openssl dgst -sha256 -hmac cio-test-signing-key` over "v0:1700000000:" + BODY.
PINNED_SIGNATURE = "6c48096f8f1582c40343437367b9dfb8d757c0e592f7c40edc5b75340a192fe2"
NOW = 1_700_000_000.0


def test_signature_matches_the_pinned_test_vector():
    assert expected_signature(KEY, TIMESTAMP, BODY) == PINNED_SIGNATURE


def test_signature_is_hmac_sha256_of_v0_timestamp_body():
    independent = hmac.new(
        KEY.encode(), b"v0:" + TIMESTAMP.encode() + b":" + BODY, hashlib.sha256
    ).hexdigest()
    assert expected_signature(KEY, TIMESTAMP, BODY) == independent


def test_valid_signature_is_accepted_with_its_timestamp():
    verified = SignatureVerifier([KEY], 300).verify(TIMESTAMP, PINNED_SIGNATURE, BODY, NOW + 10)
    assert verified.signed_at == 1_700_000_000
    assert verified.signature == PINNED_SIGNATURE
    assert verified.key_index == 0


def test_uppercase_hex_signature_is_accepted():
    verified = SignatureVerifier([KEY], 300).verify(TIMESTAMP, PINNED_SIGNATURE.upper(), BODY, NOW)
    assert verified.signature == PINNED_SIGNATURE


def test_previous_key_is_accepted_during_rotation():
    verifier = SignatureVerifier(["the-new-key", KEY], 300)
    assert verifier.verify(TIMESTAMP, PINNED_SIGNATURE, BODY, NOW).key_index == 1


def rejection(verifier: SignatureVerifier, timestamp, signature, body=BODY, now=NOW) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as caught:
        verifier.verify(timestamp, signature, body, now)
    return caught.value


@pytest.mark.parametrize(
    ("timestamp", "signature", "body", "now", "reason", "field"),
    [
        (
            TIMESTAMP,
            PINNED_SIGNATURE,
            BODY.replace(b"opened", b"clicked"),
            NOW,
            "bad_signature",
            "X-CIO-Signature",
        ),
        (TIMESTAMP, None, BODY, NOW, "missing_signature", "X-CIO-Signature"),
        (None, PINNED_SIGNATURE, BODY, NOW, "missing_timestamp", "X-CIO-Timestamp"),
        ("yesterday", PINNED_SIGNATURE, BODY, NOW, "malformed_timestamp", "X-CIO-Timestamp"),
        (TIMESTAMP, PINNED_SIGNATURE, BODY, NOW + 301, "stale_timestamp", "X-CIO-Timestamp"),
        (TIMESTAMP, PINNED_SIGNATURE, BODY, NOW - 301, "stale_timestamp", "X-CIO-Timestamp"),
        (TIMESTAMP, "not-hex", BODY, NOW, "bad_signature", "X-CIO-Signature"),
        ("1700000001", PINNED_SIGNATURE, BODY, NOW, "bad_signature", "X-CIO-Signature"),
    ],
)
def test_refusals_name_their_reason_and_header(timestamp, signature, body, now, reason, field):
    refused = rejection(SignatureVerifier([KEY], 300), timestamp, signature, body, now)
    assert (refused.reason, refused.field) == (reason, field)


def test_wrong_key_is_refused():
    assert (
        rejection(SignatureVerifier(["another-key"], 300), TIMESTAMP, PINNED_SIGNATURE).reason
        == "bad_signature"
    )


def test_without_a_configured_key_everything_is_refused():
    verifier = SignatureVerifier([None, ""], 300)
    assert not verifier.configured
    assert rejection(verifier, TIMESTAMP, PINNED_SIGNATURE).reason == "no_signing_key"


def test_tolerance_is_configurable():
    verifier = SignatureVerifier([KEY], 3600)
    assert verifier.verify(TIMESTAMP, PINNED_SIGNATURE, BODY, NOW + 3000).signed_at == 1_700_000_000
