"""The product's task queues as kombu's Redis transport keeps them: one Redis list per priority step.

The one definition of "the product's queues": the poison check judges only what is popped from
them (Celery's pidbox, reply and event queues are not ours and pass untouched), and the metrics
count what waits in them. The queue names are the wire contract's; every other Redis key of the
product is in ``hokusai_registry.keys``. This layout is kombu's, so it lives here, beside kombu.
"""

from __future__ import annotations

from kombu.transport.redis import PRIORITY_STEPS, Channel

from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE

#: The queues this product's tasks are published to (``hokusai_registry.contract``).
QUEUES = (REGISTRATION_QUEUE, WEBHOOK_QUEUE)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in (one per priority step; step 0 is the queue's name)."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


#: Every Redis list a product task message can be popped from.
PRODUCT_QUEUE_KEYS = frozenset(key for queue in QUEUES for key in queue_keys(queue))
