"""Observability: live counters, the HTTP endpoints, Prometheus exposition."""
