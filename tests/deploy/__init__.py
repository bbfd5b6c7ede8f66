"""Deploy checks: manifests, image, Prometheus rules, dashboard, and their metrics against a live /metrics."""
