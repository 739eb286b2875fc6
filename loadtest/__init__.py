"""Locust load tests over gRPC, SLO checks and the configuration sweep (``loadtest`` extra)."""
