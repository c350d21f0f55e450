"""Per-token cross-attention maps (DAAM-style): capture, aggregation, metrics, results, overlays."""
