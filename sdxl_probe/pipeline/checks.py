"""Checks of sizes, steps and timesteps against a model's configs, before any weight loads.

Every function takes the component configs (``read_configs`` from the file header or the
folder's config files, or ``dict(module.config)`` of loaded parts), so a command refuses a
bad value in milliseconds instead of after loading gigabytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sdxl_probe.errors import ProbeError

Config = Mapping[str, Any]


def vae_factor(vae: Config) -> int:
    """Pixels per latent cell along one side: ``2 ** (len(block_out_channels) - 1)`` (8 on SDXL)."""
    return 2 ** (len(vae["block_out_channels"]) - 1)


def size_multiple(unet: Config, vae: Config) -> int:
    """Image sides must be multiples of this: VAE factor x UNet downsampling (8 x 4 = 32 on SDXL)."""
    return vae_factor(vae) * 2 ** (len(unet["block_out_channels"]) - 1)


def native_size(unet: Config, vae: Config) -> int:
    """The model's native image side: UNet ``sample_size`` x VAE factor (1024 on SDXL)."""
    return int(unet["sample_size"]) * vae_factor(vae)


def check_image_size(unet: Config, vae: Config, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) in pixels, the native size where None; ProbeError when the UNet cannot take it."""
    side = native_size(unet, vae)
    height, width = height or side, width or side
    multiple = size_multiple(unet, vae)
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ProbeError(
            f"image size {height}x{width} (height x width) does not fit this model; height and width must be "
            f"positive multiples of {multiple} (VAE factor {vae_factor(vae)} x UNet downsampling), e.g. {side}"
        )
    return height, width


def check_steps(steps: int, scheduler: Config, option: str = "--steps") -> int:
    """1 <= steps <= the scheduler's ``num_train_timesteps``."""
    top = int(scheduler.get("num_train_timesteps", 1000))
    if not 1 <= steps <= top:
        raise ProbeError(f"{option} {steps}: needs 1 to {top} (the model's training timesteps); e.g. 25")
    return steps


def check_timesteps(timesteps: Iterable[int], scheduler: Config, option: str = "--timesteps") -> tuple[int, ...]:
    """Every timestep in 0 .. ``num_train_timesteps`` - 1 (the DDPM forward process's range)."""
    top = int(scheduler.get("num_train_timesteps", 1000))
    timesteps = tuple(timesteps)
    bad = [t for t in timesteps if not 0 <= t < top]
    if bad or not timesteps:
        raise ProbeError(
            f"{option} {','.join(map(str, timesteps)) or '(none)'}: timesteps must lie in 0..{top - 1} "
            f"(the model's num_train_timesteps is {top}); e.g. 300,500"
        )
    return timesteps

