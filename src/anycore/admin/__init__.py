"""L1 — the node's admin listener: ``/metrics``, the live dashboard and its feed."""
