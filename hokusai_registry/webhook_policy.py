"""The webhook URL and secret rules, written once: settings, the worker's start-up check,
``doctor``, the CLI and every delivery use these functions.

* ``WEBHOOK_URL``: an absolute ``https://`` URL; ``http://`` only with ``WEBHOOK_ALLOW_HTTP``.
* ``WEBHOOK_SECRET``: ``whsec_<base64>`` (the Standard Webhooks form, base64-decoded to the HMAC
  key); plain text only with ``WEBHOOK_ALLOW_PLAINTEXT_SECRET`` (then its UTF-8 bytes); none
  only with ``WEBHOOK_ALLOW_UNSIGNED``.

The rules read the five ``WEBHOOK_*`` values they judge through :class:`WebhookConfig`, which
``hokusai_registry.settings.Settings`` satisfies; settings import this module (to check the URL's
shape), never the other way round. Imports only the standard library, pydantic's ``SecretStr`` and
the error tree.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from typing import Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from hokusai_registry.errors import ConfigurationError

logger = logging.getLogger(__name__)

STANDARD_SECRET_PREFIX = "whsec_"


class WebhookConfig(Protocol):
    """The settings these rules judge (``Settings`` has them, named after their variables)."""

    @property
    def webhook_url(self) -> str | None: ...
    @property
    def webhook_secret(self) -> SecretStr | None: ...
    @property
    def webhook_allow_http(self) -> bool: ...
    @property
    def webhook_allow_unsigned(self) -> bool: ...
    @property
    def webhook_allow_plaintext_secret(self) -> bool: ...


def url_shape_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook endpoint at all (not an absolute http(s) URL), or None."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return "WEBHOOK_URL must be an absolute https:// URL"
    return None


def check_webhook_url(url: str, settings: WebhookConfig) -> None:
    """Refuse anything but an absolute https URL (http only with ``WEBHOOK_ALLOW_HTTP``).

    Raises:
        ConfigurationError: naming ``WEBHOOK_URL`` / ``WEBHOOK_ALLOW_HTTP``.
    """
    problem = url_shape_problem(url)
    if problem:
        raise ConfigurationError(problem)
    if urlsplit(url).scheme == "http" and not settings.webhook_allow_http:
        raise ConfigurationError(
            "WEBHOOK_URL uses http://; use https://, or set WEBHOOK_ALLOW_HTTP=true for a local receiver"
        )


def webhook_secret(settings: WebhookConfig) -> str | None:
    """The configured secret's text, or None when unset or empty."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    return secret or None


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of ``webhook-signature``: ``whsec_<base64>`` decoded, any other text as UTF-8.

    Raises:
        ConfigurationError: a ``whsec_`` secret whose rest is not base64, or an empty key.
    """
    if secret.startswith(STANDARD_SECRET_PREFIX):
        encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError("WEBHOOK_SECRET starts with 'whsec_' but the rest is not base64") from exc
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ConfigurationError("WEBHOOK_SECRET is empty")
    return key


def new_secret(n_bytes: int = 32) -> str:
    """A fresh ``whsec_<base64>`` secret (``n_bytes`` random bytes) for ``WEBHOOK_SECRET``."""
    return STANDARD_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode("ascii")


def check_webhook_config(settings: WebhookConfig) -> None:
    """Start-up check: with ``WEBHOOK_URL`` set, the URL and the secret policy must hold.

    No ``WEBHOOK_URL`` means webhooks are off, and nothing else is checked.

    Raises:
        ConfigurationError: a non-https URL without ``WEBHOOK_ALLOW_HTTP``; no ``WEBHOOK_SECRET``
            without ``WEBHOOK_ALLOW_UNSIGNED``; a malformed ``whsec_`` secret; a plain-text one
            without ``WEBHOOK_ALLOW_PLAINTEXT_SECRET``.
    """
    if settings.webhook_url is None:
        logger.info("WEBHOOK_URL is not set: no webhooks will be sent")
        return
    check_webhook_url(settings.webhook_url, settings)
    secret = webhook_secret(settings)
    if secret is not None:
        standard_webhooks_key(secret)
        if not secret.startswith(STANDARD_SECRET_PREFIX) and not settings.webhook_allow_plaintext_secret:
            raise ConfigurationError(
                "WEBHOOK_SECRET is not a whsec_<base64> secret, which Standard Webhooks receivers need; make one "
                "with `hokusai-registry webhooks new-secret`, or set WEBHOOK_ALLOW_PLAINTEXT_SECRET=true"
            )
    elif settings.webhook_allow_unsigned:
        logger.warning("WEBHOOK_ALLOW_UNSIGNED is set: webhooks are sent without signatures")
    else:
        raise ConfigurationError(
            "WEBHOOK_SECRET is not set; set it, or WEBHOOK_ALLOW_UNSIGNED=true for local development only"
        )
