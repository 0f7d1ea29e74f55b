"""Judging a run: SLO targets from the manifests and the verdict on a run's records (slo), the
gate's text, CSV and latency-plot report (slo_report), the soak's drift checks (soak), and the
one percentile (stats)."""
