"""The node's HTTP server: ``/metrics``, ``/healthz`` and a small read-only dashboard."""
