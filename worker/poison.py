"""Poison messages: nothing that arrives on a queue can stop or wedge a worker.

kombu's Redis transport parses every item it pops with ``json.loads`` and hands it to the
virtual channel, which indexes it as an envelope; a foreign item (raw bytes, JSON that is not an
envelope) raises inside the consumer loop: the worker exits (``Unrecoverable error``) or the
consumer restarts, and the popped item is gone. So the check happens where the raw bytes still
exist: the worker's Redis client inspects every ``BRPOP`` reply before kombu parses it. An item
that no task could run is written to the quarantine (``hokusai_registry.quarantine``, with its
raw bytes, queue and reason) and replaced by "nothing popped", so the loop goes on.

Only items popped from the product's task queues (``worker.queues``) are judged. Everything else
on the same transport is Celery's own traffic and passes untouched: the replies of remote control
(``celery inspect|control|status``, Flower's Workers page, mingle at start-up) arrive on
``<uuid>.reply.celery.pidbox`` lists, which the client process that asked pops with ``BRPOP``
(it loads this app too); broadcasts and events come over pub/sub.

Checked, in order: JSON; a kombu envelope (properties with delivery tag and delivery info);
``application/json`` content (never pickle); a Celery protocol-2 task message (``task`` and
``id`` headers; well-typed ``timelimit``, ``eta``, ``expires``, ``retries``, ids); a body that
decodes (base64, UTF-8, JSON ``[args, kwargs, embed]``); a task this worker knows; arguments
that fit the task's signature. Celery's own consumer callbacks for unknown/invalid messages are
overridden too, and its task handler is guarded (:class:`QuarantiningConsumer`), as a second net
under the same rule: the channel tells each message which queue it came from, and only a product
queue's message is quarantined (Celery's pidbox consumer shares the decode-error callback).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from datetime import datetime
from typing import Any

import redis
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis

from hokusai_registry import quarantine
from hokusai_registry.redis_client import connect
from hokusai_registry.settings import get_settings
from worker.queues import PRODUCT_QUEUE_KEYS, QUEUES

logger = logging.getLogger(__name__)


class Refused(Exception):
    """A message no task can run; ``str()`` is the reason."""

    def __init__(self, reason: str, *, task: str | None = None, task_id: str | None = None) -> None:
        super().__init__(reason)
        self.task = task
        self.task_id = task_id


def check_message(raw: bytes, known_tasks: Any) -> None:
    """Raise :class:`Refused` unless ``raw`` is a JSON Celery task message for a known task."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"not JSON: {exc}") from exc
    props = envelope.get("properties") if isinstance(envelope, dict) else None
    info = props.get("delivery_info") if isinstance(props, dict) else None
    if not (
        isinstance(props, dict)
        and isinstance(props.get("delivery_tag"), str)
        and isinstance(info, dict)
        and {"exchange", "routing_key"} <= info.keys()
    ):
        raise Refused("JSON but not a message envelope (no properties with delivery_tag and delivery_info)")
    content_type = envelope.get("content-type")
    if content_type != "application/json":
        raise Refused(f"content type {content_type!r} is not accepted (JSON only)")
    headers = envelope.get("headers")
    if not isinstance(headers, dict) or not isinstance(headers.get("task"), str) or not headers.get("id"):
        raise Refused("not a Celery task message (no task and id headers)")
    task_name, task_id = headers["task"], str(headers["id"])
    problem = _header_problem(headers)
    if problem:
        raise Refused(f"invalid headers: {problem}", task=task_name, task_id=task_id)
    args, kwargs = _decode_body(envelope, props, task_name, task_id)
    task = known_tasks.get(task_name)
    if task is None:
        raise Refused(f"unknown task {task_name!r}", task=task_name, task_id=task_id)
    try:
        task.__header__(*args, **kwargs)
    except TypeError as exc:
        raise Refused(f"wrong arguments for {task_name}: {exc}", task=task_name, task_id=task_id) from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    if value is None or _is_number(value):
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _header_problem(headers: dict[str, Any]) -> str | None:
    """What is wrong with the headers Celery's consumer reads before a task runs (it would crash on them)."""
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list) and len(limits) == 2 and all(v is None or _is_number(v) for v in limits)
    ):
        return f"timelimit must be [soft, hard] seconds or null, got {str(limits)[:100]!r}"
    for name in ("eta", "expires"):
        if not _is_time(headers.get(name)):
            return f"{name} must be an ISO-8601 time or null, got {str(headers.get(name))[:100]!r}"
    retries = headers.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        return f"retries must be a non-negative integer, got {str(retries)[:100]!r}"
    for name in ("root_id", "parent_id", "group", "shadow", "origin", "argsrepr", "kwargsrepr"):
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"{name} must be text or null"
    return None


def _decode_body(
    envelope: dict[str, Any], props: dict[str, Any], task: str, task_id: str
) -> tuple[list[Any], dict[str, Any]]:
    body = envelope.get("body")
    try:
        if not isinstance(body, str):
            raise ValueError("the body is not a string")
        data = base64.b64decode(body, validate=True) if props.get("body_encoding") == "base64" else body.encode()
        decoded = json.loads(data.decode(envelope.get("content-encoding") or "utf-8"))
    except (ValueError, UnicodeDecodeError, LookupError, binascii.Error) as exc:
        raise Refused(f"undecodable body: {exc}", task=task, task_id=task_id) from exc
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)
            and isinstance(decoded[1], dict)):  # fmt: skip
        raise Refused("body is not [args, kwargs, embed]", task=task, task_id=task_id)
    return decoded[0], decoded[1]


@functools.cache
def _store_client() -> redis.Redis:
    return connect(get_settings().redis_url)


def keep(raw: bytes, *, queue: str, refused: Refused) -> None:
    """Quarantine ``raw``; log (never raise) when even that fails, so the loop goes on."""
    try:
        record = quarantine.quarantine(
            _store_client(), raw, queue=queue, reason=str(refused), task=refused.task, task_id=refused.task_id
        )
        logger.error("quarantined a message from %s (%s): %s", queue, record.quarantine_id, refused)
    except Exception:
        logger.exception("could not quarantine a refused message from %s (%s); it is dropped", queue, refused)


def _known_tasks() -> Any:
    from worker.celery_app import app

    return app.tasks


#: The attribute :class:`Channel` sets on every message it delivers: the queue it came from.
POPPED_FROM = "hokusai_popped_from"


def from_product_queue(message: Any) -> bool:
    """Whether a delivered message came from one of the product's task queues (not Celery's own)."""
    return getattr(message, POPPED_FROM, None) in QUEUES


class Channel(kombu_redis.Channel):
    """kombu's Redis channel: every BRPOP reply from a product queue is checked before kombu parses it."""

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        """kombu's consumer registration; each message delivered also names its queue (for the second net)."""

        def tell_queue(message: Any) -> Any:
            setattr(message, POPPED_FROM, queue)
            return callback(message)

        return super().basic_consume(queue, no_ack, tell_queue, consumer_tag, **kwargs)

    def _get_client(self) -> Any:
        base = super()._get_client()
        factory, keywords = (base.func, base.keywords) if isinstance(base, functools.partial) else (base, {})
        sep = self.sep

        class CheckingClient(factory):  # type: ignore[misc, valid-type]
            def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
                response = super().parse_response(connection, command_name, **options)
                if command_name == "BRPOP" and response:
                    dest, item = response
                    key = dest.decode() if isinstance(dest, bytes) else str(dest)
                    if key not in PRODUCT_QUEUE_KEYS:  # Celery's own (a remote-control reply): not ours to judge
                        return response
                    queue = key.rsplit(sep, 1)[0]
                    raw = item if isinstance(item, bytes) else str(item).encode()
                    try:
                        check_message(raw, _known_tasks())
                    except Refused as refused:
                        keep(raw, queue=queue, refused=refused)
                        return None  # kombu reads "nothing popped" and polls again
                return response

        return functools.partial(CheckingClient, **keywords) if keywords else CheckingClient


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the checking :class:`Channel` (the worker's ``broker_transport``)."""

    Channel = Channel


class QuarantiningConsumer(Consumer):
    """Celery's consumer, quarantining what its own checks refuse (the transport catches most first)."""

    def _keep(self, message: Any, reason: str) -> None:
        raw = json.dumps(
            {"headers": message.headers, "properties": message.properties, "body": _text(message.body)}, default=str
        ).encode()
        keep(raw, queue=str(getattr(message, POPPED_FROM)), refused=Refused(reason))

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler, guarded: a message it cannot even turn into a request is quarantined.

        Without this, an exception while reading a message's headers (e.g. a malformed
        ``timelimit``) is an "Unrecoverable error" that stops the worker.
        """
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors)

        def guarded(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:
                if not from_product_queue(message):
                    raise
                self._keep(message, f"invalid task message: {type(exc).__name__}: {exc}")
                if not message.acknowledged:
                    message.reject_log_error(logger, self.connection_errors)
                return None

        return guarded

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if from_product_queue(message):  # Celery's pidbox consumer calls this too
            self._keep(message, f"undecodable message: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if from_product_queue(message):
            self._keep(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        if from_product_queue(message):
            self._keep(message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if from_product_queue(message):
            self._keep(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)


def _text(body: Any) -> str:
    return body.decode("utf-8", errors="backslashreplace") if isinstance(body, bytes) else str(body)
