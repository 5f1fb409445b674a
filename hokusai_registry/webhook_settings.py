"""The webhook settings (``WEBHOOK_*``): a section of :class:`hokusai_registry.settings.Settings`.

Kept apart so the settings module stays one screenful per section; the fields are read, documented
and validated exactly like every other setting (``Settings`` inherits them). The URL and secret
rules themselves live in :mod:`hokusai_registry.webhook_policy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from hokusai_registry.webhook_policy import url_shape_problem

#: Standard Webhooks' example schedule: seconds before each retry (5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
#: 14 h, 20 h, 24 h), about 75 hours in all.
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


class WebhookSettings(BaseSettings):
    """Where and how events are delivered; see docs/configuration.md and docs/webhooks.md."""

    webhook_url: str | None = Field(default=None, description="Marketplace endpoint; unset: no webhook.")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC secret, whsec_<base64>.")
    webhook_allow_unsigned: bool = Field(default=False, description="Development only: send unsigned.")
    webhook_allow_plaintext_secret: bool = Field(
        default=False,
        description="Accept a WEBHOOK_SECRET that is not whsec_<base64> (Standard Webhooks libraries cannot "
        "verify its webhook-signature); make one with `hokusai-registry webhooks new-secret`.",
    )
    webhook_allow_http: bool = Field(default=False, description="Allow http:// endpoints (local receivers).")
    webhook_connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout of one attempt.")
    webhook_read_timeout_s: float = Field(default=15.0, gt=0, description="Read timeout of one attempt.")
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_WEBHOOK_RETRY_SCHEDULE,
        description="Seconds to wait before each retry of a delivery, comma-separated (the first attempt is "
        "immediate; each wait gains 0-10% jitter); after the last, the delivery is dead-lettered. Default: "
        "Standard Webhooks' schedule, about 75 h: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.",
    )
    webhook_max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Deprecated (use WEBHOOK_RETRY_SCHEDULE): at most this many attempts, the first included; "
        "beyond the schedule's length its last wait repeats.",
    )
    webhook_backoff_base_s: float | None = Field(
        default=None,
        gt=0,
        description="Deprecated (use WEBHOOK_RETRY_SCHEDULE, refused with it): the old doubling backoff from "
        "this first wait, capped at WEBHOOK_BACKOFF_MAX_S, equal jitter, WEBHOOK_MAX_ATTEMPTS (10) attempts.",
    )
    webhook_previous_secrets: SecretStr | None = Field(
        default=None,
        description="Secrets that still sign after a rotation, until their expiry: whsec_<base64>@<UTC ISO-8601 "
        "time>, comma-separated (`hokusai-registry webhooks rotate-secret` prints the line).",
    )
    webhook_endpoints_file: Path | None = Field(
        default=None,
        description="JSON or YAML file of webhook endpoints (name, url, secrets, event types, enabled; "
        "docs/webhooks.md). Replaces WEBHOOK_URL/WEBHOOK_SECRET, the one-endpoint shorthand (named default).",
    )
    webhook_disable_after_s: float = Field(
        default=5 * 24 * 3600.0,
        gt=0,
        description="An endpoint that failed this long without a single success is disabled; its events are "
        "kept and delivered once it is enabled again (`webhooks endpoints enable`).",
    )
    webhook_backoff_max_s: float = Field(
        default=600.0, gt=0, description="Cap of one in-memory retry wait; longer waits use the durable schedule."
    )
    webhook_retry_after_max_s: float = Field(
        default=86_400.0, gt=0, description="Longest Retry-After honoured; a longer one waits this long instead."
    )
    webhook_schedule_poll_s: float = Field(
        default=5.0, gt=0, description="How often each worker hands due deferred webhook retries to a task."
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        problem = url_shape_problem(value)  # http vs https is WEBHOOK_ALLOW_HTTP's, checked at start-up
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("webhook_max_attempts", "webhook_backoff_base_s", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_retry_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_retry_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(wait < 0 for wait in value):
            raise ValueError("WEBHOOK_RETRY_SCHEDULE: every wait must be 0 seconds or more")
        return value

    @model_validator(mode="after")
    def _check_webhook_sources(self) -> Self:
        if self.webhook_backoff_base_s is not None and "webhook_retry_schedule" in self.model_fields_set:
            raise ValueError(
                "WEBHOOK_BACKOFF_BASE_S is the old backoff that WEBHOOK_RETRY_SCHEDULE replaces; set only "
                "WEBHOOK_RETRY_SCHEDULE"
            )
        if self.webhook_endpoints_file is not None and (self.webhook_url or self.webhook_secret):
            raise ValueError(
                "WEBHOOK_ENDPOINTS_FILE lists every endpoint; unset WEBHOOK_URL and WEBHOOK_SECRET (the "
                "one-endpoint shorthand), or put them in the file as the endpoint named default"
            )
        return self
