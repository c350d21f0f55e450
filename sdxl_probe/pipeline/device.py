"""The one device and dtype policy of every command that loads a model.

``--device auto|cpu|cuda|cuda:N|mps`` is checked against what torch reports before any weight
loads. ``--dtype auto|fp32|bf16|fp16``; ``auto`` means:

* CUDA and MPS: fp16, the dtype SDXL's published half-precision weights use (diffusers'
  ``variant="fp16"``), supported by every CUDA GPU; the VAE runs in fp32 when its config's
  ``force_upcast`` asks (SDXL's original VAE overflows to NaN in fp16), as
  ``StableDiffusionXLPipeline`` upcasts it.
* CPU: bf16 where the CPU computes it natively (AVX512-BF16 or AMX, see
  :func:`cpu_has_native_bf16`): it halves memory against fp32 (a full-size model then fits
  in about the file's size) and its matmuls run faster than fp32 there; fp32 elsewhere,
  where bf16 is emulated and slow. fp16 is never chosen on a CPU: its kernels are several
  times slower than fp32.

bf16 has fp32's exponent range, so a bf16 VAE does not overflow: only fp16 is upcast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdxl_probe.errors import ProbeError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Precision:
    """Where and in which dtypes a model runs.

    Attributes:
        device: a torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: text encoders' and UNet's dtype name (``"fp32"``, ``"bf16"``, ``"fp16"``).
        vae_dtype: the VAE's dtype name (fp32 when an fp16 VAE's config asks for ``force_upcast``).
        requested: the ``--dtype`` given (``"auto"`` or a name), for the report.
    """

    device: str
    dtype: str
    vae_dtype: str
    requested: str = "auto"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def torch_vae_dtype(self) -> torch.dtype:
        return torch_dtype(self.vae_dtype)

    def describe(self) -> str:
        """One line for the command output, e.g. ``"cpu, bf16 (auto)"``."""
        vae = f", VAE {self.vae_dtype}" if self.vae_dtype != self.dtype else ""
        return f"{self.device}, {self.dtype}{vae}{' (auto)' if self.requested == 'auto' else ''}"


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the names ``--dtype`` takes); other dtypes by their torch name."""
    names = {v: k for k, v in DTYPE_NAMES.items()}
    return names.get(str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))


def available_devices() -> list[str]:
    """The devices torch reports here: ``cpu``, then ``cuda:0..N-1`` and ``mps`` when present."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str, option: str = "--device") -> str:
    """A validated torch device string for ``auto|cpu|cuda|cuda:N|mps``; ProbeError otherwise.

    ``auto`` picks ``cuda:0``, else ``mps``, else ``cpu``; ``cuda`` means ``cuda:0``.
    """
    text = name.strip().lower()
    if text not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", text):
        raise ProbeError(f"{option} {name!r}: not a device; use one of {', '.join(DEVICE_CHOICES)}")
    here = available_devices()
    if text == "auto":
        return next((d for d in here if d != "cpu"), "cpu")
    wanted = "cuda:0" if text == "cuda" else text
    if wanted in here:
        return wanted
    if text.startswith("cuda"):
        why = "CUDA is not available on this machine" if "cuda:0" not in here else f"there is no {wanted}"
    else:
        why = f"{text.upper()} is not available on this machine"
    raise ProbeError(f"{option} {name}: {why}; devices here: {', '.join(here)}")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    ``torch.backends.cpu.get_cpu_capability()`` names only the vector ISA (AVX512, AVX2), so the
    bf16 extensions are asked of torch's CPU feature probe.
    """
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe is not None and probe()) or (amx is not None and amx()))


def resolve_dtype(name: str, device: str, option: str = "--dtype") -> str:
    """The compute dtype name for ``auto|fp32|bf16|fp16`` on ``device`` (see the module docstring)."""
    text = name.strip().lower()
    if text not in DTYPE_CHOICES:
        raise ProbeError(f"{option} {name!r}: not a dtype; use one of {', '.join(DTYPE_CHOICES)}")
    if text != "auto":
        return text
    if device.startswith(("cuda", "mps")):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def vae_dtype_for(dtype: str, vae_config: dict[str, Any]) -> str:
    """fp32 for an fp16 VAE whose config sets ``force_upcast`` (as diffusers' SDXL pipeline), else ``dtype``."""
    return "fp32" if dtype == "fp16" and vae_config.get("force_upcast", False) else dtype


def resolve_precision(device: str, dtype: str, vae_config: dict[str, Any] | None = None) -> Precision:
    """Device, network dtype and VAE dtype from the ``--device``/``--dtype`` strings and the VAE config."""
    resolved = resolve_device(device)
    name = resolve_dtype(dtype, resolved)
    return Precision(resolved, name, vae_dtype_for(name, vae_config or {}), requested=dtype.strip().lower())


def precision_of(components: Any) -> dict[str, str]:
    """``{device, dtype, vae_dtype}`` of loaded components: as loaded, else read from their modules."""
    if getattr(components, "precision", None):
        return dict(components.precision)
    loaded = dict(components.models())
    main = next(loaded[n] for n in ("text_encoder", "unet", "text_encoder_2", "vae") if n in loaded)
    vae = loaded.get("vae")
    out = {"device": str(main.device), "dtype": dtype_name(main.dtype)}
    out["vae_dtype"] = dtype_name(vae.dtype) if vae is not None else None
    return out


def open_model(
    model: str, device: str, dtype: str, *, allow_pickle: bool = False
) -> tuple[dict[str, dict[str, Any]], Precision]:
    """Everything a command checks before loading: the device, the dtype and the model's configs.

    Returns:
        (component configs read from the header or config files, the resolved :class:`Precision`).
    """
    from sdxl_probe.models.load import read_configs

    resolve_precision(device, dtype)  # a bad device or dtype is refused before the model is opened
    configs = read_configs(model, allow_pickle=allow_pickle)
    return configs, resolve_precision(device, dtype, configs["vae"])


def load_model(
    model: str,
    precision: Precision,
    *,
    parts: tuple[str, ...] | None = None,
    allow_pickle: bool = False,
    identity: bool = False,
):
    """``load_components`` with the policy's device and dtypes (each network read straight into its dtype).

    ``identity`` computes ``model_hash()`` first, from the stored tensors: its memory-mapped pages
    and TE2's split q/k/v copies (about 0.8 GB on SDXL) are gone before the weights arrive, instead
    of adding to the peak after them.
    """
    from sdxl_probe.models.identity import source_hash
    from sdxl_probe.models.load import load_components

    known = source_hash(model, allow_pickle=allow_pickle) if identity else None
    extra = {} if parts is None else {"parts": parts}
    components = load_components(model, dtype=precision.torch_dtype, vae_dtype=precision.torch_vae_dtype,
                                 device=precision.device, allow_pickle=allow_pickle, **extra)  # fmt: skip
    if known is not None and components.source in (model, str(Path(model).expanduser())):
        components.remember_hash(known)
    trim_heap()  # the load's freed cast buffers
    if components.source != "tiny":  # tests may hand back shared in-memory parts: leave those alone
        components.precision = {"device": precision.device, "dtype": precision.dtype,
                                "vae_dtype": precision.vae_dtype}  # fmt: skip
    return components


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Weights under glibc's mmap threshold (which rises to 32 MB once large temporaries are freed,
    as a load's cast buffers are) live on the heap, and freeing them alone returns nothing: a
    released UNet would keep its 5 GB resident beside the VAE's decode.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
