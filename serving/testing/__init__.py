"""Helpers for tests, benchmarks and load tests (a server process, synthetic studies); never
on the request path."""
