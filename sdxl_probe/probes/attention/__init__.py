"""Attention probe: per-token cross-attention maps (DAAM-style): capture, aggregation, metrics, results, report."""
