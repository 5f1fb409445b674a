"""Benchmarks and the load run (not part of the test suite). See bench/README.md."""
