"""Webhooks: the marketplace event built once (``event``), signed (``signing``), sent one attempt
at a time (``delivery``) with backoff (``backoff``), kept durably with its dead letters
(``store``) and replayed by operators (``replay``).
"""
