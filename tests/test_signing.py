"""worker.webhooks.signing: both signatures, checked with hmac and with the official standardwebhooks package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devtools.receiver import WebhookReceiver
from hokusai_registry import __version__
from hokusai_registry.errors import ConfigurationError
from worker.webhooks.signing import signature_headers, standard_webhooks_key

BODY = b'{"event_type":"model_registered","model":{"id":"xray-7","name":"m","status":"registered","version":"3"}}'
EVENT_ID = "b5272e64-0db9-5ad6-bdbd-d03ed039900d"
PLAIN_SECRET = "correct horse battery staple"
WHSEC_KEY = bytes(range(1, 33))  # 32 bytes: base64 ends in "="
WHSEC_SECRET = "whsec_" + base64.b64encode(WHSEC_KEY).decode()


def now_s() -> int:
    return int(time.time())


def hex_hmac(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def test_headers_carry_type_agent_and_the_idempotency_key() -> None:
    headers = signature_headers(BODY, EVENT_ID, PLAIN_SECRET, 1_790_000_000)
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"hokusai-registry/{__version__}"
    assert headers["X-Hokusai-Idempotency-Key"] == EVENT_ID
    assert headers["webhook-id"] == EVENT_ID
    assert headers["webhook-timestamp"] == "1790000000"


@pytest.mark.parametrize("secret", [PLAIN_SECRET, WHSEC_SECRET])
def test_hokusai_signature_is_hex_hmac_keyed_by_the_secret_strings_utf8(secret: str) -> None:
    headers = signature_headers(BODY, EVENT_ID, secret, now_s())
    # The whole configured string is the key, whsec_ prefix included: what the site verifies today.
    assert headers["X-Hokusai-Signature"] == hex_hmac(secret.encode("utf-8"), BODY)


def test_standard_signature_with_whsec_secret_verifies_with_the_official_package() -> None:
    headers = signature_headers(BODY, EVENT_ID, WHSEC_SECRET, now_s())
    assert Webhook(WHSEC_SECRET).verify(BODY, headers) == {
        "event_type": "model_registered",
        "model": {"id": "xray-7", "name": "m", "status": "registered", "version": "3"},
    }


def test_whsec_secret_is_base64_decoded_for_the_standard_key() -> None:
    assert standard_webhooks_key(WHSEC_SECRET) == WHSEC_KEY
    timestamp = now_s()
    headers = signature_headers(BODY, EVENT_ID, WHSEC_SECRET, timestamp)
    expected = hmac.new(WHSEC_KEY, f"{EVENT_ID}.{timestamp}.".encode() + BODY, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


def test_plain_text_secret_is_its_utf8_bytes_for_the_standard_key() -> None:
    headers = signature_headers(BODY, EVENT_ID, PLAIN_SECRET, now_s())
    assert standard_webhooks_key(PLAIN_SECRET) == PLAIN_SECRET.encode()
    Webhook(PLAIN_SECRET.encode()).verify(BODY, headers)
    Webhook("whsec_" + base64.b64encode(PLAIN_SECRET.encode()).decode()).verify(BODY, headers)


def test_unpadded_whsec_secret_is_accepted_like_the_official_package() -> None:
    unpadded = WHSEC_SECRET.rstrip("=")
    assert unpadded != WHSEC_SECRET
    headers = signature_headers(BODY, EVENT_ID, unpadded, now_s())
    Webhook(unpadded).verify(BODY, headers)


def test_tampered_body_fails_both_signatures() -> None:
    headers = signature_headers(BODY, EVENT_ID, WHSEC_SECRET, now_s())
    tampered = BODY.replace(b'"version":"3"', b'"version":"4"')
    assert not hmac.compare_digest(headers["X-Hokusai-Signature"], hex_hmac(WHSEC_SECRET.encode(), tampered))
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_SECRET).verify(tampered, headers)


def test_other_id_or_timestamp_fails_the_standard_signature() -> None:
    timestamp = now_s()
    headers = signature_headers(BODY, EVENT_ID, WHSEC_SECRET, timestamp)
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_SECRET).verify(BODY, {**headers, "webhook-id": "another-event"})
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_SECRET).verify(BODY, {**headers, "webhook-timestamp": str(timestamp - 1)})


def test_wrong_secret_fails() -> None:
    headers = signature_headers(BODY, EVENT_ID, PLAIN_SECRET, now_s())
    with pytest.raises(WebhookVerificationError):
        Webhook(b"another secret").verify(BODY, headers)
    assert headers["X-Hokusai-Signature"] != hex_hmac(b"another secret", BODY)


def test_no_secret_is_refused_unless_unsigned_is_allowed() -> None:
    with pytest.raises(ConfigurationError, match=r"WEBHOOK_SECRET.*WEBHOOK_ALLOW_UNSIGNED"):
        signature_headers(BODY, EVENT_ID, None, now_s())
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET"):
        signature_headers(BODY, EVENT_ID, "", now_s())


def test_unsigned_when_allowed_sends_everything_but_signatures() -> None:
    headers = signature_headers(BODY, EVENT_ID, None, 1_790_000_000, allow_unsigned=True)
    assert "X-Hokusai-Signature" not in headers and "webhook-signature" not in headers
    assert headers["X-Hokusai-Idempotency-Key"] == headers["webhook-id"] == EVENT_ID


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_"])
def test_malformed_whsec_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET"):
        signature_headers(BODY, EVENT_ID, secret, now_s())


@pytest.mark.parametrize("secret", [PLAIN_SECRET, WHSEC_SECRET])
def test_sample_receiver_verifies_both_signatures(secret: str) -> None:
    receiver = WebhookReceiver(secret)
    headers = {k.lower(): v for k, v in signature_headers(BODY, EVENT_ID, secret, now_s()).items()}
    assert receiver.handle(headers, BODY).status == 200
    assert receiver.handle(headers, BODY.replace(b"xray", b"yray")).status == 401
    accepted, tampered = receiver.requests
    assert (accepted.hokusai_verified, accepted.standard_verified) == (True, True)
    assert (tampered.hokusai_verified, tampered.standard_verified) == (False, False)
    assert len(receiver.events) == 1
    receiver.stop()


def test_sample_receiver_rejects_a_valid_hokusai_signature_with_a_forged_standard_one() -> None:
    receiver = WebhookReceiver(PLAIN_SECRET)
    headers = {k.lower(): v for k, v in signature_headers(BODY, EVENT_ID, PLAIN_SECRET, now_s()).items()}
    headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    assert receiver.handle(headers, BODY).status == 401
    assert receiver.requests[0].hokusai_verified and receiver.requests[0].standard_verified is False
    receiver.stop()
