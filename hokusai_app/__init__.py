"""The application layer: the ``hokusai-registry`` command, ``doctor`` and ``demo``.

The only layer that may import both sides (``producers`` and ``worker``) on top of the core
(``hokusai_registry``).
"""
