"""SDXL model loading: single-file SAI/ldm checkpoints, diffusers folders, presets, tiny test parts.

Import from the submodules (``sdxl_probe.models.load`` etc.); this package imports no torch.
"""
