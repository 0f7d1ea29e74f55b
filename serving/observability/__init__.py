"""Metric names and recorders, SLO recording rules and alerts, the Grafana dashboard."""
