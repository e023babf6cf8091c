"""Standard Webhooks signatures: the spec's own test vector, rotation, and the receiver's check."""

from __future__ import annotations

import pytest
from synergy_dispatcher.signing import InvalidSecret, secret_key, sign, signature_header, webhook_headers

from tests.fakes.webhook_receiver import verify_standard_webhook

# From the Standard Webhooks reference libraries' tests (standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_spec_test_vector_signs_to_the_published_signature() -> None:
    assert sign(secret_key(SPEC_SECRET), SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def test_the_secret_prefix_is_optional() -> None:
    bare = SPEC_SECRET.removeprefix("whsec_")
    assert sign(secret_key(bare), SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def test_a_rotation_signs_with_every_secret_space_separated() -> None:
    new = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"  # 24 bytes of "A"
    header = signature_header([secret_key(new), secret_key(SPEC_SECRET)], SPEC_MSG_ID, SPEC_TIMESTAMP,
                              SPEC_PAYLOAD)
    first, second = header.split(" ")
    assert second == SPEC_SIGNATURE
    assert first.startswith("v1,") and first != SPEC_SIGNATURE
    # A receiver that only knows the old secret, or only the new one, accepts the request.
    headers = {"webhook-id": SPEC_MSG_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": header}
    assert verify_standard_webhook([SPEC_SECRET], headers, SPEC_PAYLOAD, now=SPEC_TIMESTAMP) is None
    assert verify_standard_webhook([new], headers, SPEC_PAYLOAD, now=SPEC_TIMESTAMP) is None


def test_the_headers_carry_id_timestamp_and_signature() -> None:
    headers = webhook_headers([secret_key(SPEC_SECRET)], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    assert headers == {"content-type": "application/json", "webhook-id": SPEC_MSG_ID,
                       "webhook-timestamp": "1614265330", "webhook-signature": SPEC_SIGNATURE}


def test_the_receiver_refuses_a_tampered_body_and_a_stale_timestamp() -> None:
    headers = {"webhook-id": SPEC_MSG_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
               "webhook-signature": SPEC_SIGNATURE}
    assert verify_standard_webhook([SPEC_SECRET], headers, b'{"test": 2432232315}',
                                   now=SPEC_TIMESTAMP) == "no matching signature"
    assert verify_standard_webhook([SPEC_SECRET], headers, SPEC_PAYLOAD,
                                   now=SPEC_TIMESTAMP + 301) == "timestamp outside tolerance"


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_c2hvcnQ="])
def test_a_secret_that_is_not_base64_or_too_short_is_refused(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        secret_key(secret)
