"""A model's identity from its stored tensors, whatever the format and the load dtype.

The hash covers, per network and per weight under its diffusers name (the names the loaded
modules use), the weight's shape and three blocks of its values: the first, middle and last
:data:`BLOCK` elements of the flattened tensor, cast to bfloat16. So:

* a SAI single file and the diffusers folder saved from it hash the same (single-file
  tensors go through diffusers' name converters first, as views of a memory map);
* the load dtype does not matter (fp16, bf16 and fp32 copies of the same weights agree once
  cast to bfloat16, the coarsest of the three);
* only a few pages per tensor are read (about 30 MB of a 6.9 GB SDXL file), never the
  whole file; a fine-tune moves essentially every weight, so three blocks per tensor suffice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sdxl_probe.models.components import MODEL_NAMES

if TYPE_CHECKING:
    import torch

BLOCK = 256  # elements per sampled block
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def canonical_key(component: str, key: str) -> str | None:
    """The name a weight is hashed under, or None for stored entries that are not weights.

    transformers >= 5.6 drops the ``text_model.`` level from ``CLIPTextModel`` only, so it is
    removed from both text encoders; ``position_ids`` buffers are constants, not weights.
    """
    if key.endswith("position_ids"):
        return None
    if component in _TEXT_ENCODERS:
        key = key.removeprefix("text_model.")
    return f"{component}.{key}"


def hash_states(states: Iterable[tuple[str, Mapping[str, torch.Tensor]]]) -> str:
    """16 hex digits over ``(component, state dict)`` pairs in diffusers naming.

    Only floating-point tensors count; entries are sorted by canonical name, so the order
    of a file's header does not matter.
    """
    import torch

    digest = hashlib.sha256()
    for component, state in states:
        named = {canonical_key(component, k): v for k, v in state.items() if v.is_floating_point()}
        for name in sorted(k for k in named if k is not None):
            tensor = named[name]
            digest.update(f"{name}|{tuple(tensor.shape)}".encode())
            values = sample_values(tensor.detach().reshape(-1)).to(torch.bfloat16)
            digest.update(values.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def sample_values(flat: torch.Tensor) -> torch.Tensor:
    """First, middle and last :data:`BLOCK` elements of a 1-D tensor (all of it when short), on the CPU."""
    import torch

    n = flat.numel()
    if n <= 3 * BLOCK:
        return flat.cpu()
    mid = (n - BLOCK) // 2
    return torch.cat([flat[:BLOCK], flat[mid : mid + BLOCK], flat[n - BLOCK :]]).cpu()


def modules_hash(modules: Iterable[tuple[str, torch.nn.Module]]) -> str:
    """The hash of in-memory modules (for components built in memory, e.g. tiny test parts)."""
    return hash_states((name, module.state_dict()) for name, module in modules)


def source_hash(source: str | Path, *, allow_pickle: bool = False) -> str:
    """The hash of a preset, a diffusers folder or a single file, read from the stored tensors.

    Equal to :func:`modules_hash` of the components loaded from it, in any dtype.
    """
    from sdxl_probe.models.load import PICKLE_SUFFIXES, PRESETS, preset_folder

    if isinstance(source, str) and source in PRESETS:
        return hash_states(_folder_states(preset_folder(source)))
    path = Path(source).expanduser()
    if path.is_dir():
        return hash_states(_folder_states(path))
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return hash_states(_pickle_states(path, allow_pickle))
    return hash_states(_single_file_states(path))


def _folder_states(folder: Path) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    from sdxl_probe.models.safetensors_file import read_header, read_tensors

    for name in MODEL_NAMES:
        files = sorted((folder / name).glob("*.safetensors"))
        if not files:  # pickled .bin weights (only when the loader accepted them)
            yield name, _bin_state(folder / name)
            continue
        state: dict[str, torch.Tensor] = {}
        for f in files:
            header = read_header(f)
            state.update(read_tensors(header, header.tensors, None, mmap=True))
        yield name, state


def _bin_state(sub: Path) -> dict[str, torch.Tensor]:
    import torch

    state = {}
    for f in sorted(sub.glob("*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return state


def _single_file_states(path: Path) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    from sdxl_probe.models.load import _HeaderSource
    from sdxl_probe.models.safetensors_file import read_header
    from sdxl_probe.models.single_file import configs_from_metadata, diffusers_state

    header = read_header(path)
    configs, _ = configs_from_metadata(header.metadata, str(path))
    source = _HeaderSource(header)
    for name in MODEL_NAMES:
        yield name, diffusers_state(source, name, configs[name], None, mmap=True)


def _pickle_states(path: Path, allow_pickle: bool) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    from sdxl_probe.models.load import _DictSource, read_pickle_state
    from sdxl_probe.models.single_file import configs_from_metadata, diffusers_state

    state, metadata = read_pickle_state(path, allow_pickle)
    configs, _ = configs_from_metadata(metadata, str(path))
    source = _DictSource(state)
    for name in MODEL_NAMES:
        yield name, diffusers_state(source, name, configs[name], None)

