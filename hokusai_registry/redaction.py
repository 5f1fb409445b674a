"""What of a URL may be shown: the one redaction rule for logs, messages, tags and ``doctor``.

Imports only the standard library.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` reduced to scheme, host, port and path: never credentials, a query or a fragment.

    >>> redact_url("https://user:token@hooks.example/in?sig=abc#x")
    'https://hooks.example/in'
    >>> redact_url("redis://:secret@redis:6379/0")
    'redis://redis:6379/0'

    A string that is not a URL with a host (a bare path, ``sqlite:///file``) keeps its path.
    """
    parts = urlsplit(url)
    if not parts.netloc:  # sqlite:////abs/path, file:/x, a bare path: nothing secret before the path
        return url.split("?", 1)[0].split("#", 1)[0]
    host = parts.netloc.rsplit("@", 1)[-1]  # user-info (a token or a password) never shown
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. an error message) with the password of ``url`` replaced by ``***``."""
    parts = urlsplit(url)
    secrets = {parts.password} if parts.password else set()
    if parts.username and not parts.password and "@" in parts.netloc:
        secrets.add(parts.username)  # "redis://secret@host": a lone user-info is a password too
    secrets.update(value for key, value in parse_qsl(parts.query) if key.lower() == "password" and value)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
