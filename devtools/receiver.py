"""A small sample webhook receiver: verifies both signatures, deduplicates, records everything.

Used in-process by the tests and the demo (:class:`WebhookReceiver`), and as the docker-compose
``receiver`` service (``python -m devtools.receiver --host 0.0.0.0 --port 8787``, secret from
``WEBHOOK_SECRET`` or ``WEBHOOK_SECRET_FILE``). It answers 401 to a bad signature, 200 to a
repeated idempotency key, and otherwise what it was scripted to answer (default 200), optionally after a delay.

It verifies the way the marketplace and a Standard Webhooks consumer would, independently of the
sender's code: ``X-Hokusai-Signature`` with :mod:`hmac` keyed by the secret's UTF-8 bytes, and
``webhook-signature`` with the official ``standardwebhooks`` package when it is installed
(a ``whsec_`` secret as is, any other secret as its UTF-8 bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptedResponse:
    """One scripted answer: a status, an optional delay before it, extra headers (``Retry-After``)."""

    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as received, with what the receiver made of it."""

    received_at: datetime
    headers: dict[str, str]
    body: bytes
    hokusai_verified: bool
    standard_verified: bool | None  # None: standardwebhooks is not installed, or no secret
    duplicate: bool
    status: int


class WebhookReceiver:
    """An HTTP receiver on its own thread: ``start()``, ``url``, ``requests``, ``events``, ``stop()``.

    With ``secret=None`` nothing is verified and every request is accepted (unsigned development).
    """

    def __init__(self, secret: str | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self._script: deque[ScriptedResponse] = deque()
        self._requests: list[ReceivedRequest] = []
        self._events: list[dict[str, Any]] = []
        self._accepted_keys: set[str] = set()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}/webhooks/model-registered"

    def script(self, *responses: int | ScriptedResponse) -> None:
        """Queue the next answers (``script(500, 500, 200)``); once used up, answer 200."""
        with self._changed:
            self._script.extend(r if isinstance(r, ScriptedResponse) else ScriptedResponse(r) for r in responses)

    def start(self) -> WebhookReceiver:
        """Serve on a background thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (scripted delays in progress end at once)."""
        self._stopping.set()  # ends scripted delays early
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._changed:
            return list(self._requests)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Accepted event bodies (answered 2xx), one per idempotency key."""
        with self._changed:
            return list(self._events)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` events were accepted; raise ``TimeoutError`` at the deadline."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._events) >= count, timeout=timeout_s):
                raise TimeoutError(f"{len(self._events)} of {count} webhook events after {timeout_s}s")
            return list(self._events)

    # ------------------------------------------------------------------ request handling
    def handle(self, headers: dict[str, str], body: bytes) -> ScriptedResponse:
        """Verify, deduplicate, record, and choose the answer to one request."""
        hokusai_ok, standard_ok = self._verify(headers, body)
        key = headers.get("x-hokusai-idempotency-key", "")
        event = _json_or_none(body)
        with self._changed:
            duplicate = key in self._accepted_keys
            if self.secret is not None and not (hokusai_ok and standard_ok is not False):
                answer = ScriptedResponse(401)
            elif event is None:
                answer = ScriptedResponse(400)
            elif duplicate:
                answer = ScriptedResponse(200)
            else:
                answer = self._script.popleft() if self._script else ScriptedResponse(200)
            if 200 <= answer.status < 300 and not duplicate:
                self._accepted_keys.add(key)
                self._events.append(event)
            self._requests.append(
                ReceivedRequest(datetime.now(UTC), headers, body, hokusai_ok, standard_ok, duplicate, answer.status)
            )
            self._changed.notify_all()
        logger.info(
            "received %s (signatures %s/%s, duplicate %s): answering %s",
            key or "<no key>",
            hokusai_ok,
            standard_ok,
            duplicate,
            answer.status,
        )
        self._stopping.wait(answer.delay_s)
        return answer

    def _verify(self, headers: dict[str, str], body: bytes) -> tuple[bool, bool | None]:
        if self.secret is None:
            return False, None
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        hokusai_ok = hmac.compare_digest(expected, headers.get("x-hokusai-signature", ""))
        try:
            from standardwebhooks import Webhook
        except ImportError:
            return hokusai_ok, None
        key: str | bytes = self.secret if self.secret.startswith("whsec_") else self.secret.encode()
        try:
            Webhook(key).verify(body, headers, json_parse=False)
        except Exception:  # WebhookVerificationError, or malformed headers
            return hokusai_ok, False
        return hokusai_ok, True

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (the docker-compose service)."""
        self._server.serve_forever()


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = receiver.handle(headers, body)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except (BrokenPipeError, ConnectionResetError):
                logger.debug("receiver: the client left before the answer (it timed out)")

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("receiver: " + format, *args)

    return Handler


def run_receiver(host: str, port: int, secret: str | None) -> None:
    """Serve a receiver on ``host:port`` until interrupted, logging each request."""
    receiver = WebhookReceiver(secret, host, port)
    logger.info("webhook receiver listening on %s (signatures %s)", receiver.url, "on" if secret else "off")
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Sample webhook receiver; the secret comes from WEBHOOK_SECRET or WEBHOOK_SECRET_FILE."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from hokusai_registry.settings import Settings  # the one settings rule, *_FILE included

    secret = Settings().webhook_secret
    run_receiver(args.host, args.port, (secret.get_secret_value() if secret else "") or None)


if __name__ == "__main__":
    main()
