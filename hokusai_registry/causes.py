"""Walking an exception's cause chain, written once for every retry decision.

A library often wraps a transport failure in an error that looks permanent (MLflow reports a lost
connection as ``INVALID_PARAMETER_VALUE``; kombu wraps redis-py's errors), the real cause only in
the chained exception. Producers (``producers.broker``) and workers (``worker.retry_policy``)
judge an error by every link of its ``__cause__``/``__context__`` chain, walked here.

Imports only the standard library.
"""

from __future__ import annotations


def cause_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling (each once, nearest first)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def any_cause(exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """True when any link of the cause chain of ``exc`` is an instance of ``types``."""
    return any(isinstance(link, types) for link in cause_chain(exc))
