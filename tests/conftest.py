"""Shared fixtures: tiny random SDXL-architecture components built from config (offline, ~1 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_components():
    """``build_tiny_components(0)`` in eval mode: TE1 32 wide, TE2 64 wide (projection 48), kind "tiny".

    Session-scoped and shared: tests must not modify its weights (copy.deepcopy it first).
    """
    from sdxl_probe.models.tiny import build_tiny_components

    return build_tiny_components(0)


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests on machines without CUDA (torch is imported only when such tests exist)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in gpu_items:
        item.add_marker(skip)
