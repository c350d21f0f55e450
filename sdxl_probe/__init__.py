"""sdxl-probe: measure how captions change SDXL LoRA training."""

__version__ = "0.1.0"
