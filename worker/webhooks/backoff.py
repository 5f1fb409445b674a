"""Retry timing as pure functions: exponential backoff with jitter and a cap, and ``Retry-After``.

Nothing here sleeps or reads a clock unless asked to (``now`` is a parameter), so the policy is
unit-tested without waiting. Attempts are counted from 1 (the attempt that just failed).
"""

from __future__ import annotations

import logging
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from hokusai_registry.errors import InvalidInputError

logger = logging.getLogger(__name__)

Jitter = Literal["full", "equal"]

_DELTA_SECONDS_RE = re.compile(r"^\d+$")
# 2**64 s is far beyond any cap; stops 2**attempt overflowing a float.
_MAX_EXPONENT = 64


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
    jitter: Jitter = "equal",
) -> float:
    """Seconds to wait after failed ``attempt``: ``min(max_s, base_s * 2**(attempt-1))``, jittered.

    ``"equal"`` jitter (the default) waits between half and all of that ceiling, so a struggling
    server always gets at least half the exponential pause; ``"full"`` waits anywhere in
    ``[0, ceiling]`` (spreads a thundering herd best).

    Raises:
        InvalidInputError: ``attempt`` below 1, a non-positive ``base_s`` or ``max_s``, or an
            unknown ``jitter``.
    """
    if attempt < 1:
        raise InvalidInputError(f"attempt must be 1 or more, got {attempt}")
    if base_s <= 0 or max_s <= 0:
        raise InvalidInputError(f"base_s and max_s must be positive, got {base_s} and {max_s}")
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    draw = (rng or random).random()
    if jitter == "full":
        return ceiling * draw
    if jitter == "equal":
        return ceiling / 2 + (ceiling / 2) * draw
    raise InvalidInputError(f"jitter must be 'full' or 'equal', got {jitter!r}")


def retry_delay(
    attempt: int,
    *,
    retry_after_s: float | None,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
    jitter: Jitter = "equal",
) -> float:
    """The backoff delay after ``attempt``, but never shorter than the server's ``Retry-After``.

    The server's wish wins over the cap: the result exceeds ``max_s`` when ``retry_after_s`` does
    (the caller schedules such long waits durably instead of with an in-memory countdown).
    """
    delay = backoff_delay(attempt, base_s=base_s, max_s=max_s, rng=rng, jitter=jitter)
    if retry_after_s is None:
        return delay
    return max(delay, retry_after_s)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for, or None when absent or invalid.

    Accepts delta-seconds (``"120"``) and an HTTP-date (``"Wed, 21 Oct 2026 07:28:00 GMT"``); a
    date in the past means 0. ``now`` defaults to the current UTC time.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DELTA_SECONDS_RE.match(text):
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        logger.debug("ignoring an unparseable Retry-After header")
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        moment = moment.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (moment - reference).total_seconds())
