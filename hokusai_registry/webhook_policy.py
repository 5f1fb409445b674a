"""The webhook URL and secret rules, written once: settings, the worker's start-up check,
``doctor``, the CLI and every delivery use these functions.

* ``WEBHOOK_URL``: an absolute ``https://`` URL; ``http://`` only with ``WEBHOOK_ALLOW_HTTP``.
* ``WEBHOOK_SECRET``: ``whsec_<base64>`` (the Standard Webhooks form, base64-decoded to the HMAC
  key); plain text only with ``WEBHOOK_ALLOW_PLAINTEXT_SECRET`` (then its UTF-8 bytes); none
  only with ``WEBHOOK_ALLOW_UNSIGNED``.

* Endpoints (:func:`configured_endpoints`): ``WEBHOOK_ENDPOINTS_FILE`` (JSON, or YAML by its
  ``.yaml``/``.yml`` suffix) lists them; else ``WEBHOOK_URL`` + ``WEBHOOK_SECRET`` (+
  ``WEBHOOK_PREVIOUS_SECRETS``) are the one endpoint named ``default``. Each has a name, a URL, its
  secrets (primary first; an old one with ``expires_at`` signs until then), the event types it
  takes (all when unset) and ``enabled``. The file is read on every call, so a rotation written
  to it reaches the next attempt without a restart.

The rules read the ``WEBHOOK_*`` values they judge through :class:`WebhookConfig`, which
``hokusai_registry.settings.Settings`` satisfies; settings import this module (to check the URL's
shape), never the other way round. Imports only the standard library, pydantic's ``SecretStr`` and
the error tree.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from hokusai_registry.errors import ConfigurationError

logger = logging.getLogger(__name__)

STANDARD_SECRET_PREFIX = "whsec_"
#: The endpoint of ``WEBHOOK_URL``/``WEBHOOK_SECRET``, and of every event stored before endpoints existed.
DEFAULT_ENDPOINT = "default"
#: How long a rotated-out secret keeps signing by default (``webhooks rotate-secret --keep-old-for``).
DEFAULT_ROTATION_OVERLAP_S = 24 * 3600
ENDPOINT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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
    @property
    def webhook_previous_secrets(self) -> SecretStr | None: ...
    @property
    def webhook_endpoints_file(self) -> Path | None: ...


@dataclass(frozen=True)
class EndpointSecret:
    """One signing secret of an endpoint; ``expires_at`` (UTC) ends an old one's overlap."""

    value: SecretStr
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        """Does it still sign at ``now``?"""
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Endpoint:
    """One receiver: where events go, what signs them, which event types it takes.

    ``event_types`` None takes every type. ``enabled`` is the configured state; an operator's or an
    automatic disable is kept in Redis (``worker.webhooks.endpoints``).
    """

    name: str
    url: str
    secrets: tuple[EndpointSecret, ...] = ()
    event_types: frozenset[str] | None = None
    enabled: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def takes(self, event_type: str) -> bool:
        """Does this endpoint want events of ``event_type``?"""
        return self.event_types is None or event_type in self.event_types

    def active_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets that sign now, primary first (the texts: never log them)."""
        moment = now or datetime.now(UTC)
        return [entry.value.get_secret_value() for entry in self.secrets if entry.active(moment)]

    def describe(self, now: datetime | None = None) -> dict[str, Any]:
        """A JSON-friendly view without any secret: how many sign, and when the old ones expire."""
        moment = now or datetime.now(UTC)
        return {
            "name": self.name,
            "url": self.url,
            "event_types": sorted(self.event_types) if self.event_types is not None else None,
            "enabled": self.enabled,
            "active_secrets": len(self.active_secrets(moment)),
            "secret_expiries": [entry.expires_at.isoformat() for entry in self.secrets
                                if entry.expires_at is not None and entry.active(moment)],
        }  # fmt: skip


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


def parse_expiring_secrets(text: str) -> tuple[EndpointSecret, ...]:
    """``WEBHOOK_PREVIOUS_SECRETS``: ``whsec_<base64>@<ISO-8601 time>``, comma-separated.

    Raises:
        ConfigurationError: an entry without its ``@`` expiry, or with a time that is not ISO-8601
            with a zone (the message never holds the secret).
    """
    entries = []
    for number, part in enumerate((piece.strip() for piece in text.split(",")), start=1):
        if not part:
            continue
        secret, at, when = part.rpartition("@")
        if not secret or not at:
            raise ConfigurationError(f"WEBHOOK_PREVIOUS_SECRETS entry {number}: write <secret>@<expiry time>")
        entries.append(EndpointSecret(SecretStr(secret), _aware_time(when, f"WEBHOOK_PREVIOUS_SECRETS entry {number}")))
    return tuple(entries)


def _aware_time(text: Any, where: str) -> datetime:
    try:
        moment = text if isinstance(text, datetime) else datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigurationError(f"{where}: expires_at is not an ISO-8601 time") from exc
    if moment.tzinfo is None:
        raise ConfigurationError(f"{where}: expires_at needs a time zone (e.g. Z for UTC)")
    return moment.astimezone(UTC)


def read_endpoints_file(path: Path) -> dict[str, Any]:
    """The endpoints file's document: JSON, or YAML for a ``.yaml``/``.yml`` file.

    Raises:
        ConfigurationError: unreadable, not JSON/YAML, or no ``endpoints`` list at its top.
    """
    where = f"WEBHOOK_ENDPOINTS_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml  # optional: only a YAML endpoints file needs it (MLflow installs it)

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except ImportError as exc:
        raise ConfigurationError(f"{where}: a YAML file needs PyYAML (pip install pyyaml), or use JSON") from exc
    except ValueError as exc:  # json.JSONDecodeError
        raise ConfigurationError(f"{where}: not valid JSON: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError, whose class exists only when PyYAML is installed
        raise ConfigurationError(f"{where}: not valid YAML: {type(exc).__name__}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("endpoints"), list):
        raise ConfigurationError(f"{where}: the top level must be a mapping with an 'endpoints' list")
    return document


def _endpoint_from(entry: Any, number: int, base: Path) -> Endpoint:
    where = f"WEBHOOK_ENDPOINTS_FILE endpoint {number}"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: must be a mapping (name, url, secrets, event_types, enabled)")
    unknown = set(entry) - {"name", "url", "secrets", "event_types", "enabled"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name, url = entry.get("name"), entry.get("url")
    if not isinstance(name, str) or not ENDPOINT_NAME_RE.match(name):
        raise ConfigurationError(f"{where}: name must match {ENDPOINT_NAME_RE.pattern}")
    where = f"WEBHOOK_ENDPOINTS_FILE endpoint {name!r}"
    if not isinstance(url, str) or url_shape_problem(url):
        raise ConfigurationError(f"{where}: url must be an absolute http(s) URL")
    types = entry.get("event_types")
    if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
        raise ConfigurationError(f"{where}: event_types must be a list of event type names")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigurationError(f"{where}: enabled must be true or false")
    secrets_list = entry.get("secrets", [])
    if not isinstance(secrets_list, list):
        raise ConfigurationError(f"{where}: secrets must be a list of {{secret|secret_file, expires_at}}")
    found = []
    for index, item in enumerate(secrets_list, start=1):
        if not isinstance(item, dict) or set(item) - {"secret", "secret_file", "expires_at"}:
            raise ConfigurationError(f"{where}: secret {index} must have secret or secret_file, and expires_at")
        if ("secret" in item) == ("secret_file" in item):
            raise ConfigurationError(f"{where}: secret {index}: give one of secret and secret_file")
        if "secret_file" in item:
            secret_path = base / str(item["secret_file"])
            try:
                value = secret_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigurationError(f"{where}: secret {index}: cannot read {secret_path}") from exc
        else:
            value = str(item["secret"])
        expires = item.get("expires_at")
        found.append(EndpointSecret(SecretStr(value), _aware_time(expires, where) if expires is not None else None))
    return Endpoint(name, url, tuple(found), frozenset(types) if types is not None else None, enabled)


def configured_endpoints(settings: WebhookConfig) -> tuple[Endpoint, ...]:
    """Every configured endpoint, in the configured order (empty: webhooks are off).

    Raises:
        ConfigurationError: the endpoints file cannot be read, or an entry breaks its shape
            (names are unique, URLs absolute, times zoned); ``WEBHOOK_PREVIOUS_SECRETS`` malformed.
    """
    path = settings.webhook_endpoints_file
    if path is not None:
        document = read_endpoints_file(path)
        endpoints = tuple(_endpoint_from(item, n, path.parent) for n, item in enumerate(document["endpoints"], 1))
        names = [endpoint.name for endpoint in endpoints]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"WEBHOOK_ENDPOINTS_FILE {path}: endpoint names must be unique")
        return endpoints
    if settings.webhook_url is None:
        return ()
    primary = webhook_secret(settings)
    found: tuple[EndpointSecret, ...] = (EndpointSecret(SecretStr(primary)),) if primary else ()
    if settings.webhook_previous_secrets is not None:
        found += parse_expiring_secrets(settings.webhook_previous_secrets.get_secret_value())
    return (Endpoint(DEFAULT_ENDPOINT, settings.webhook_url, found),)


def endpoint_named(settings: WebhookConfig, name: str) -> Endpoint | None:
    """The configured endpoint called ``name``, or None."""
    return next((endpoint for endpoint in configured_endpoints(settings) if endpoint.name == name), None)


def check_secrets(secrets_text: Sequence[str], settings: WebhookConfig, *, where: str) -> None:
    """The secret policy on one endpoint's active secrets (``where`` names it in messages).

    Raises:
        ConfigurationError: none, without ``WEBHOOK_ALLOW_UNSIGNED``; a malformed ``whsec_`` secret;
            a plain-text one without ``WEBHOOK_ALLOW_PLAINTEXT_SECRET``.
    """
    if not secrets_text:
        if settings.webhook_allow_unsigned:
            logger.warning("WEBHOOK_ALLOW_UNSIGNED is set: %s is sent events without signatures", where)
            return
        raise ConfigurationError(
            f"{where} is not set; set it, or WEBHOOK_ALLOW_UNSIGNED=true for local development only"
        )
    for secret in secrets_text:
        standard_webhooks_key(secret)
        if not secret.startswith(STANDARD_SECRET_PREFIX) and not settings.webhook_allow_plaintext_secret:
            raise ConfigurationError(
                f"{where} is not a whsec_<base64> secret, which Standard Webhooks receivers need; make "
                "one with `hokusai-registry webhooks new-secret`, or set WEBHOOK_ALLOW_PLAINTEXT_SECRET=true"
            )


def check_webhook_config(settings: WebhookConfig) -> None:
    """Start-up check: every configured endpoint's URL and secrets must hold the policy.

    No endpoint (no ``WEBHOOK_URL``, no ``WEBHOOK_ENDPOINTS_FILE``) means webhooks are off.

    Raises:
        ConfigurationError: a non-https URL without ``WEBHOOK_ALLOW_HTTP``; no secret without
            ``WEBHOOK_ALLOW_UNSIGNED``; a malformed ``whsec_`` secret; a plain-text one without
            ``WEBHOOK_ALLOW_PLAINTEXT_SECRET``; a malformed endpoints file.
    """
    endpoints = configured_endpoints(settings)
    if not endpoints:
        logger.info("WEBHOOK_URL is not set: no webhooks will be sent")
        return
    for endpoint in endpoints:
        check_webhook_url(endpoint.url, settings)
        where = "WEBHOOK_SECRET" if settings.webhook_endpoints_file is None else f"endpoint {endpoint.name!r}'s secret"
        check_secrets(endpoint.active_secrets(), settings, where=where)
