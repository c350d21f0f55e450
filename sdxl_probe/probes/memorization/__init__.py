"""Memorization scores and the overfitting report across a run's checkpoints (issue #14)."""
