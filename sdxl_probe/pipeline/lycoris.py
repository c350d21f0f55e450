"""Load kohya files diffusers cannot read (LoHa ``hada_*``, LoKr ``lokr_*``, DoRA ``dora_scale``) as peft adapters.

diffusers' ``load_lora_weights`` reads plain kohya LoRA but drops ``dora_scale`` with a warning and
has no LoHa/LoKr converter, so :func:`sdxl_probe.pipeline.lora.lora_loaded` sends such files here.
Module names are matched through the same kohya naming the trainer writes
(:mod:`sdxl_probe.pipeline.kohya_names`), every module of the file must exist in the model, and the
tensors are read into peft's own layers, whose forward is the upstream formula:

- LoRA/DoRA (peft ``LoraConfig(use_dora=True)``): ``dora_scale`` on the output axis is peft's
  magnitude (LyCORIS ``wd_on_out``); the input-axis form (``(1, in)``) has no peft layer and is refused.
- LoHa (peft ``LoHaConfig``): ``(w1a @ w1b) * (w2a @ w2b) * alpha / r`` (LyCORIS ``LohaModule``).
- LoKr (peft ``LoKrConfig``): ``kron(w1, w2) * alpha / r``, ``r`` from the low-rank factor, scale 1
  when both factors are full (ComfyUI ``LoKrAdapter``, LyCORIS ``LokrModule``). Factor shapes are
  taken from the file, whatever ``factor`` it was trained with.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

OWN_MARKERS = (".hada_", ".lokr_", ".dora_scale")
UNSUPPORTED = (".hada_t1", ".hada_t2", ".lokr_t2")  # LyCORIS use_tucker on 3x3 convs
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def needs_own_route(keys: list[str]) -> bool:
    """True when a kohya file has LoHa, LoKr or DoRA tensors."""
    return any(m in k for k in keys for m in OWN_MARKERS)


def module_kind(tensors: dict[str, torch.Tensor]) -> str:
    """"loha" | "lokr" | "lora" from one module's key suffixes."""
    if "hada_w1_a" in tensors:
        return "loha"
    if any(k in tensors for k in LOKR):
        return "lokr"
    if "lora_down.weight" in tensors:
        return "lora"
    raise ValueError(f"unknown tensors {sorted(tensors)}")


def inject_kohya(components: Any, state: dict[str, torch.Tensor], adapter_name: str, loaded: list[str]) -> None:
    """Add one peft adapter per model from kohya ``state``; appends each model's name to ``loaded``.

    Raises:
        ValueError: a module the model lacks, a format peft has no layer for, or mixed types in one model.
    """
    from sdxl_probe.pipeline.kohya_names import weight_modules

    bad = [k for k in state if any(m in k for m in UNSUPPORTED)]
    if bad:
        raise ValueError(f"{bad[0]}: LyCORIS use_tucker (CP) factors are not supported")
    grouped: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in state.items():
        name, _, suffix = key.partition(".")
        grouped[name][suffix] = value
    index = weight_modules(components)
    per_model: dict[str, dict[str, dict[str, torch.Tensor]]] = defaultdict(dict)
    for name, tensors in grouped.items():
        if name not in index:
            raise ValueError(f"module {name} is not in this model")
        model, path = index[name]
        per_model[model][path] = tensors
    for model, modules in per_model.items():
        _inject_model(getattr(components, model), modules, adapter_name)
        loaded.append(model)


def _inject_model(model: torch.nn.Module, modules: dict[str, dict[str, torch.Tensor]], name: str) -> None:
    from peft import inject_adapter_in_model

    kinds = {module_kind(t) for t in modules.values()}
    if len(kinds) != 1:
        raise ValueError(f"mixed network types {sorted(kinds)} in one model")
    kind = kinds.pop()
    dora = kind == "lora" and any("dora_scale" in t for t in modules.values())
    if dora and not all("dora_scale" in t for t in modules.values()):  # one peft config per model
        raise ValueError("DoRA on some modules of a model and plain LoRA on others is not supported")
    ranks = {p: _rank_alpha(kind, t) for p, t in modules.items()}
    inject_adapter_in_model(_config(kind, dora, ranks), model, adapter_name=name)
    with torch.no_grad():
        for path, tensors in modules.items():
            _read_into(model.get_submodule(path), kind, tensors, name, ranks[path])
    model.requires_grad_(False)


def _rank_alpha(kind: str, t: dict[str, torch.Tensor]) -> tuple[int, float]:
    """(r, alpha) so that peft's alpha / r is the scale the kohya readers use (ComfyUI ``weight_adapter``)."""
    if kind == "lora":
        r = t["lora_down.weight"].shape[0]
    elif kind == "loha":
        r = t["hada_w1_b"].shape[0]
    else:
        low = [t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t]
        if not low:
            return 1, 1.0  # both factors full: scale 1, alpha ignored
        r = low[-1]
    return r, float(t["alpha"]) if "alpha" in t else float(r)


def _config(kind: str, dora: bool, ranks: dict[str, tuple[int, float]]):
    import re

    from peft import LoHaConfig, LoKrConfig, LoraConfig

    common = {"target_modules": list(ranks),
              "rank_pattern": {f"^{re.escape(p)}$": r for p, (r, _) in ranks.items()},
              "alpha_pattern": {f"^{re.escape(p)}$": a for p, (_, a) in ranks.items()}}  # fmt: skip
    if kind == "lora":
        return LoraConfig(r=1, lora_alpha=1, use_dora=dora, **common)
    if kind == "loha":
        return LoHaConfig(r=1, alpha=1, **common)
    return LoKrConfig(r=1, alpha=1, **common)


def _read_into(module: torch.nn.Module, kind: str, t: dict[str, torch.Tensor], a: str, ra: tuple[int, float]) -> None:
    """Copy one module's tensors into its peft layer (LoKr factors are replaced, shapes from the file)."""
    if kind == "lora":
        _copy(module.lora_A[a].weight, t["lora_down.weight"])
        _copy(module.lora_B[a].weight, t["lora_up.weight"])
        if "dora_scale" in t:
            mag = module.lora_magnitude_vector[a].weight
            if t["dora_scale"].shape[0] != module.lora_B[a].weight.shape[0]:
                raise ValueError("dora_scale on the input axis (LyCORIS wd_on_out=False) has no peft layer")
            _copy(mag, t["dora_scale"].reshape(mag.shape))
        return
    if kind == "loha":
        for k in LOHA:
            _copy(getattr(module, k)[a], t[k])
        return
    base = module.get_base_layer().weight
    for k in LOKR:
        if a in getattr(module, k):
            del getattr(module, k)[a]
        if k in t:
            getattr(module, k)[a] = torch.nn.Parameter(t[k].to(device=base.device, dtype=base.dtype),
                                                       requires_grad=False)  # fmt: skip
    module.r[a], module.alpha[a] = ra
    module.scaling[a] = ra[1] / ra[0]


def _copy(target: torch.Tensor, value: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"shape {tuple(value.shape)} where the model has {tuple(target.shape)}")
    target.copy_(value.to(target.dtype))
