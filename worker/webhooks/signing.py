"""Request headers of a webhook attempt, with both signatures the contract asks for.

* ``X-Hokusai-Signature: sha256=<hex>``: HMAC-SHA256 of the body, keyed by the *primary* (first)
  secret string's UTF-8 bytes, whatever its form (what the marketplace verifies today).
* ``webhook-signature: v1,<base64> v1,<base64> ...`` (Standard Webhooks): one signature per active
  secret, space-separated, in the order given (primary first), so a receiver holding any one of
  them verifies during a rotation. Each is HMAC-SHA256 of
  ``"{webhook-id}.{webhook-timestamp}.{body}"`` keyed by :func:`standard_webhooks_key`:

  - ``whsec_<base64>`` → the base64-decoded bytes (the Standard Webhooks convention);
  - any other text → its UTF-8 bytes, as-is. The official package base64-decodes every *string*
    it is given, so a receiver using it with a plain-text secret passes the bytes:
    ``Webhook(secret.encode())`` (or the string ``"whsec_" + base64(secret)``).

Only with ``allow_unsigned`` (``WEBHOOK_ALLOW_UNSIGNED``) may there be no secret; the signature
headers are then left out and everything else is sent. A ``traceparent`` (W3C trace context) is
passed on as its header when given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Sequence

from hokusai_registry import __version__
from hokusai_registry.errors import ConfigurationError
from hokusai_registry.webhook_policy import standard_webhooks_key

logger = logging.getLogger(__name__)

USER_AGENT = f"hokusai-registry/{__version__}"
HOKUSAI_SIGNATURE_HEADER = "X-Hokusai-Signature"
IDEMPOTENCY_HEADER = "X-Hokusai-Idempotency-Key"
TRACEPARENT_HEADER = "traceparent"


def hokusai_signature(body: bytes, secret: str) -> str:
    """The ``X-Hokusai-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def standard_signature(body: bytes, event_id: str, timestamp: int, secret: str) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC of ``"{id}.{timestamp}.{body}"``."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_webhooks_key(secret), signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode('ascii')}"


def signature_headers(
    body: bytes,
    event_id: str,
    secret: str | Sequence[str] | None,
    timestamp: int,
    *,
    allow_unsigned: bool = False,
    traceparent: str | None = None,
) -> dict[str, str]:
    """Every header of one attempt: content type, user agent, idempotency key and signatures.

    Args:
        body: the exact bytes sent.
        event_id: the idempotency key, also ``webhook-id``.
        secret: the active secret, or several (primary first); None or empty only with ``allow_unsigned``.
        timestamp: Unix seconds of this attempt (``webhook-timestamp``).
        allow_unsigned: ``WEBHOOK_ALLOW_UNSIGNED``; permits no secret.
        traceparent: the job's W3C ``traceparent``, sent as is.
    Raises:
        ConfigurationError: no secret and unsigned sending not allowed, or a malformed secret.
    """
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: event_id,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
    }
    if traceparent:
        headers[TRACEPARENT_HEADER] = traceparent
    secrets = [secret] if isinstance(secret, str) else list(secret or ())
    secrets = [text for text in secrets if text]
    if not secrets:
        if not allow_unsigned:
            raise ConfigurationError(
                "WEBHOOK_SECRET is not set; set it, or WEBHOOK_ALLOW_UNSIGNED=true for local development only"
            )
        return headers
    headers[HOKUSAI_SIGNATURE_HEADER] = hokusai_signature(body, secrets[0])
    headers["webhook-signature"] = " ".join(standard_signature(body, event_id, timestamp, text) for text in secrets)
    return headers
