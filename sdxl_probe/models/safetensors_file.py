"""Checked, streaming reads and writes of ``.safetensors`` files.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}``,
then the data section; offsets are relative to the data section.

Reading validates the header against the file size before any tensor is touched, so a
truncated download or a corrupt file gives a clear :class:`ModelLoadError`. Tensors are either
zero-copy views of a private memory map (fast; pages load on first use) or read with plain
``readinto`` into fresh tensors, one at a time (when a cast is needed, or on request), so a
loader holds each weight exactly once.
Writing streams tensors one at a time, so a multi-GB file never needs a second copy in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.io import atomic_path

if TYPE_CHECKING:
    import torch

# safetensors dtype name -> (torch dtype attribute, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on header size


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: str  # safetensors name, e.g. "F16"
    shape: tuple[int, ...]
    begin: int  # byte offset in the data section
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header."""

    path: Path
    data_start: int  # absolute file offset of the data section
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: t.shape for k, t in self.tensors.items()}


def _corrupt(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: not a valid .safetensors file ({what}); expected an 8-byte header length, a JSON header "
        "and the tensor data it describes. The file is corrupt or incomplete: download or copy it again."
    )


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header: sizes, dtypes and offsets must fit the file exactly.

    Raises:
        ModelLoadError: the file is too short, the header is not JSON, or the data section is
            shorter than the header says (a truncated file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size < 8:
            raise _corrupt(path, f"only {size} bytes")
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER or 8 + n > size:
                raise _corrupt(path, f"header length field says {n} bytes but the file has {size} bytes in all")
            raw = f.read(n)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the checkpoint ({e.strerror or e}); check the path and its permissions") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ is not a JSON object of text values")
    tensors = {k: _tensor_info(path, k, v) for k, v in header.items()}
    _check_data_size(path, tensors, size - 8 - n)
    return SafetensorsHeader(path=path, data_start=8 + n, tensors=tensors, metadata=dict(metadata))


def _tensor_info(path: Path, key: str, entry: object) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise _corrupt(path, f"header entry {key!r} lacks dtype/shape/data_offsets") from None
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _corrupt(path, f"tensor {key!r} has unknown dtype {dtype!r}")
    if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)) or end < begin:
        raise _corrupt(path, f"tensor {key!r}: shape {entry['shape']!r} or data_offsets {[begin, end]!r} are not counts")  # type: ignore[index]
    info = TensorInfo(dtype=dtype, shape=shape, begin=int(begin), end=int(end))
    if info.end - info.begin != info.numel * DTYPES[dtype][1]:
        raise _corrupt(
            path, f"tensor {key!r}: {info.end - info.begin} bytes for shape {list(shape)} of {dtype}"
        )
    return info


def _check_data_size(path: Path, tensors: Mapping[str, TensorInfo], data_size: int) -> None:
    needed = max((t.end for t in tensors.values()), default=0)
    if needed > data_size:
        raise ModelLoadError(
            f"{path}: truncated .safetensors file: its header describes {needed:,} bytes of tensor data but only "
            f"{data_size:,} bytes follow the header ({needed - data_size:,} missing). "
            "The download or copy stopped early: fetch the file again."
        )


def read_tensors(
    header: SafetensorsHeader, keys: Iterable[str], dtype: torch.dtype | None = None, *, mmap: bool = False
) -> dict[str, torch.Tensor]:
    """Read ``keys`` as CPU tensors, casting floating-point ones to ``dtype`` if given.

    Args:
        header: the validated header of the file.
        keys: tensor names to read.
        dtype: target dtype of floating-point tensors; None keeps the stored dtype.
        mmap: return zero-copy views of a private memory map (pages load on first use, like
            diffusers) for tensors needing no cast; others are copied into fresh memory.
            Each cast happens right after its read, so peak memory is the result plus one tensor.
    """
    import torch

    keys = sorted(keys, key=lambda k: header.tensors[k].begin)
    mapped = _mapped_bytes(header) if mmap else None
    out: dict[str, torch.Tensor] = {}
    with header.path.open("rb") as f:
        for key in keys:
            info = header.tensors[key]
            stored = getattr(torch, DTYPES[info.dtype][0])
            cast = dtype is not None and stored.is_floating_point and stored != dtype
            start = header.data_start + info.begin
            if mapped is not None and not cast and start % DTYPES[info.dtype][1] == 0:
                out[key] = mapped[start : header.data_start + info.end].view(stored).reshape(info.shape)
                continue
            tensor = _read_one(f, start, info, stored)
            out[key] = tensor.to(dtype) if cast else tensor
    return out


def _mapped_bytes(header: SafetensorsHeader) -> torch.Tensor:
    """The whole file as a uint8 tensor over a private (copy-on-write) memory map."""
    import torch

    size = header.path.stat().st_size
    storage = torch.UntypedStorage.from_file(str(header.path), shared=False, nbytes=size)
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _read_one(f, offset: int, info: TensorInfo, torch_dtype: torch.dtype) -> torch.Tensor:
    """Read one tensor straight into uninitialised memory (no zero-fill pass, no second copy)."""
    import torch

    tensor = torch.empty(info.shape, dtype=torch_dtype)
    nbytes = info.end - info.begin
    if nbytes == 0:
        return tensor
    f.seek(offset)
    if f.readinto(memoryview(tensor.reshape(-1).view(torch.uint8).numpy())) != nbytes:
        raise ModelLoadError(
            f"{f.name}: file ended while reading a tensor; the file is truncated: fetch it again"
        )
    return tensor


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its name, shape, dtype and a function producing its values on demand."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]


def write_safetensors_stream(path: str | Path, specs: list[TensorSpec], metadata: Mapping[str, str]) -> Path:
    """Atomically write a safetensors file, producing and writing one tensor at a time.

    Tensors are laid out in key order. Each ``make()`` result must match its spec's shape and dtype.
    """
    import torch

    specs = sorted(specs, key=lambda s: s.key)
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for s in specs:
        name = next(n for n, (attr, _) in DTYPES.items() if getattr(torch, attr) == s.dtype)
        nbytes = _numel(s.shape) * DTYPES[name][1]
        header[s.key] = {"dtype": name, "shape": list(s.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for s in specs:
            f.write(_tensor_bytes(s))
    return Path(path)


def _tensor_bytes(spec: TensorSpec) -> memoryview:
    import torch

    t = spec.make().detach().to("cpu").contiguous()
    if tuple(t.shape) != tuple(spec.shape) or t.dtype != spec.dtype:
        raise ValueError(
            f"{spec.key}: produced {tuple(t.shape)} {t.dtype}, spec says {spec.shape} {spec.dtype}"
        )
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
