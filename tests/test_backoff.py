"""worker.retry_policy: exponential backoff with jitter and a cap, Retry-After parsing. No sleeping."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from hokusai_registry.errors import InvalidInputError, InvalidJobError, RegistryUnavailableError, WebhookDeliveryError
from hokusai_registry.settings import Settings
from worker.retry_policy import (
    WebhookRetry,
    backoff_delay,
    parse_retry_after,
    retry_delay,
    task_retry_delay,
    webhook_horizon_s,
    webhook_retry,
    webhook_retry_waits,
)

NOW = datetime(2026, 11, 26, 23, 31, 48, tzinfo=UTC)


class FixedDraw(random.Random):
    """An rng whose ``random()`` always returns ``value`` (0 = shortest, just under 1 = longest)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0)])
def test_backoff_doubles_per_attempt(attempt: int, ceiling: float) -> None:
    longest = backoff_delay(attempt, base_s=2.0, max_s=600.0, rng=FixedDraw(1.0), jitter="full")
    assert longest == ceiling


def test_backoff_is_capped_even_for_huge_attempts() -> None:
    assert backoff_delay(12, base_s=2.0, max_s=60.0, rng=FixedDraw(1.0)) == 60.0
    assert backoff_delay(10_000, base_s=2.0, max_s=60.0, rng=FixedDraw(1.0)) == 60.0


def test_full_jitter_spans_zero_to_ceiling() -> None:
    # attempt 3: ceiling 4 s
    assert backoff_delay(3, base_s=1.0, max_s=100.0, rng=FixedDraw(0.0), jitter="full") == 0.0
    assert backoff_delay(3, base_s=1.0, max_s=100.0, rng=FixedDraw(0.5), jitter="full") == 2.0


def test_equal_jitter_waits_at_least_half_the_ceiling() -> None:
    # attempt 3: ceiling 4 s
    assert backoff_delay(3, base_s=1.0, max_s=100.0, rng=FixedDraw(0.0), jitter="equal") == 2.0
    assert backoff_delay(3, base_s=1.0, max_s=100.0, rng=FixedDraw(1.0), jitter="equal") == 4.0


def test_default_jitter_is_equal_and_random_draws_stay_in_range() -> None:
    rng = random.Random(42)
    # attempt 4: ceiling 8 s
    delays = [backoff_delay(4, base_s=1.0, max_s=100.0, rng=rng) for _ in range(500)]
    assert all(4.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 400  # actually jittered


def test_seeded_rng_makes_delays_reproducible() -> None:
    first = [backoff_delay(n, base_s=1.0, max_s=50.0, rng=random.Random(7)) for n in range(1, 8)]
    second = [backoff_delay(n, base_s=1.0, max_s=50.0, rng=random.Random(7)) for n in range(1, 8)]
    assert first == second


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempt": 0, "base_s": 1.0, "max_s": 10.0}, "attempt"),
        ({"attempt": 1, "base_s": 0.0, "max_s": 10.0}, "base_s"),
        ({"attempt": 1, "base_s": 1.0, "max_s": -1.0}, "max_s"),
        ({"attempt": 1, "base_s": 1.0, "max_s": 10.0, "jitter": "none"}, "jitter"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        backoff_delay(**kwargs)


def test_retry_delay_without_retry_after_is_the_backoff() -> None:
    assert retry_delay(2, retry_after_s=None, base_s=2.0, max_s=600.0, rng=FixedDraw(1.0)) == 4.0


def test_retry_delay_never_shorter_than_retry_after() -> None:
    assert retry_delay(1, retry_after_s=30.0, base_s=2.0, max_s=600.0, rng=FixedDraw(1.0)) == 30.0


def test_retry_delay_keeps_a_longer_backoff_over_a_short_retry_after() -> None:
    assert retry_delay(5, retry_after_s=1.0, base_s=2.0, max_s=600.0, rng=FixedDraw(1.0)) == 32.0


def test_retry_after_beyond_the_cap_wins_over_the_cap() -> None:
    assert retry_delay(1, retry_after_s=7200.0, base_s=2.0, max_s=600.0, rng=FixedDraw(1.0)) == 7200.0


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 0 ", 0.0), ("3600", 3600.0)])
def test_parse_retry_after_delta_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_parse_retry_after_http_date_in_the_future() -> None:
    later = NOW + timedelta(seconds=90)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(header, now=NOW) == 90.0


def test_parse_retry_after_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0


def test_parse_retry_after_defaults_now_to_the_clock() -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    parsed = parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert parsed is not None and 3590 <= parsed <= 3600


@pytest.mark.parametrize("header", [None, "", "  ", "soon", "-5", "1.5", "Thu, 99 Foo 2026 xx:yy GMT"])
def test_parse_retry_after_ignores_absent_or_invalid_values(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


# ---------------------------------------------------------------------- the decisions built on them
def test_a_task_retries_a_retryable_error_within_the_cap_until_its_retries_run_out() -> None:
    transient = RegistryUnavailableError("MLflow down")
    delay = task_retry_delay(transient, retries=2, max_retries=5, base_s=1.0, max_s=60.0)
    assert delay is not None and 2.0 <= delay <= 4.0  # attempt 3, equal jitter
    assert task_retry_delay(transient, retries=5, max_retries=5, base_s=1.0, max_s=60.0) is None
    unbounded = task_retry_delay(transient, retries=50, max_retries=None, base_s=1.0, max_s=60.0)
    assert unbounded is not None and 30.0 <= unbounded <= 60.0
    assert task_retry_delay(InvalidJobError("bad"), retries=0, max_retries=5, base_s=1.0, max_s=60.0) is None


def test_a_tasks_countdown_never_exceeds_the_cap_even_when_a_server_asks_for_more() -> None:
    asked = WebhookDeliveryError("503", status_code=503, retry_after_s=7200.0)
    assert task_retry_delay(asked, retries=0, max_retries=5, base_s=1.0, max_s=30.0) == 30.0


def webhook_settings(**overrides: float) -> Settings:
    fields = {"webhook_max_attempts": 4, "webhook_backoff_base_s": 2.0, "webhook_backoff_max_s": 60.0}
    return Settings(**{**fields, **overrides})


def test_a_webhook_counts_down_then_gives_up_at_its_last_attempt() -> None:
    settings = webhook_settings()
    decision = webhook_retry(1, retry_after_s=None, settings=settings, rng=FixedDraw(1.0))
    assert decision == WebhookRetry("countdown", 2.0)
    assert webhook_retry(3, retry_after_s=None, settings=settings, rng=FixedDraw(0.0)) == WebhookRetry("countdown", 4.0)
    assert webhook_retry(4, retry_after_s=None, settings=settings).action == "give_up"


def test_a_webhook_waits_a_long_retry_after_in_the_durable_schedule_up_to_its_cap() -> None:
    settings = webhook_settings(webhook_retry_after_max_s=3600.0)
    assert webhook_retry(1, retry_after_s=90.0, settings=settings) == WebhookRetry("defer", 90.0)  # over 60 s
    assert webhook_retry(1, retry_after_s=50.0, settings=settings, rng=FixedDraw(0.0)) == WebhookRetry(
        "countdown", 50.0
    )
    assert webhook_retry(1, retry_after_s=7200.0, settings=settings) == WebhookRetry("defer", 3600.0)


# ---------------------------------------------------------------------- the retry schedule (WEBHOOK_RETRY_SCHEDULE)
def test_the_default_schedule_rides_out_three_days_counting_down_short_waits_and_deferring_long_ones() -> None:
    """Standard Webhooks' example, walked attempt by attempt on a compressed clock: no sleeping."""
    settings = Settings()
    assert webhook_retry_waits(settings) == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert webhook_horizon_s(settings) >= 72 * 3600
    clock, actions = 0.0, []
    for attempt in range(1, 11):
        decision = webhook_retry(attempt, retry_after_s=None, settings=settings, rng=FixedDraw(0.0))
        actions.append(decision.action)
        clock += decision.delay_s
    assert actions == ["countdown", "countdown"] + ["defer"] * 7 + ["give_up"]  # 10 attempts, the first immediate
    assert clock >= 72 * 3600


def test_a_scheduled_wait_gains_at_most_ten_percent_jitter_and_never_undercuts_retry_after() -> None:
    settings = Settings(webhook_retry_schedule=(10.0, 100.0))
    assert webhook_retry(1, retry_after_s=None, settings=settings, rng=FixedDraw(0.0)).delay_s == 10.0
    assert webhook_retry(1, retry_after_s=None, settings=settings, rng=FixedDraw(1.0)).delay_s == pytest.approx(11.0)
    assert webhook_retry(1, retry_after_s=50.0, settings=settings, rng=FixedDraw(1.0)).delay_s == 50.0
    assert webhook_retry(3, retry_after_s=None, settings=settings).action == "give_up"


def test_the_schedule_is_read_from_its_variable_and_the_old_backoff_is_refused_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", "0, 0.5,2")
    assert Settings().webhook_retry_schedule == (0.0, 0.5, 2.0)
    monkeypatch.setenv("WEBHOOK_BACKOFF_BASE_S", "1")
    with pytest.raises(ValidationError, match="set only WEBHOOK_RETRY_SCHEDULE"):
        Settings()
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", "5,-1")
    monkeypatch.delenv("WEBHOOK_BACKOFF_BASE_S")
    with pytest.raises(ValidationError, match="0 seconds or more"):
        Settings()


def test_the_deprecated_max_attempts_cuts_or_stretches_the_schedule() -> None:
    assert webhook_retry_waits(Settings(webhook_max_attempts=1)) == ()
    assert webhook_retry_waits(Settings(webhook_max_attempts=3)) == (5.0, 300.0)
    stretched = Settings(webhook_retry_schedule=(1.0, 2.0), webhook_max_attempts=5)
    assert webhook_retry_waits(stretched) == (1.0, 2.0, 2.0, 2.0)
    legacy = Settings(webhook_backoff_base_s=2.0, webhook_backoff_max_s=60.0, webhook_max_attempts=4)
    assert webhook_retry_waits(legacy) == (2.0, 4.0, 8.0)  # the old doubling ceilings
