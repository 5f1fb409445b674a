"""Development tooling, not installed with the package: local processes for the demo, tests and
benchmarks (``devstack``), the sample webhook receiver (``receiver``) and builders of valid jobs
and events (``builders``). Lives in the checkout only.
"""
