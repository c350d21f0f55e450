"""The network through peft: which modules it targets, its type (LoRA, rsLoRA, DoRA, LoHa, LoKr), and its parameters.

Targets follow sd-scripts ``networks/lora.py`` (docs/sd-scripts-compat.md §4):

- ``attn``: ``to_q/to_k/to_v/to_out.0`` of every attention in the UNet's Transformer2DModels;
- ``transformer`` (sd-scripts' default): every Linear (and 1x1 conv) inside each Transformer2DModel;
- ``full``: ``transformer`` plus the 3x3 convs of ResnetBlock2D/Downsample2D/Upsample2D, at
  ``conv_dim``/``conv_alpha``, and their Linears and 1x1 convs at ``dim`` (sd-scripts with ``conv_dim``);
- text encoders: the Linears of CLIPAttention and CLIPMLP (q/k/v/out_proj, fc1, fc2).

peft's LoRA is sd-scripts' LoRA: ``W + alpha/r * up @ down``, down initialised kaiming-uniform
(a = sqrt 5) and up zeros. Text encoders get peft's ``inject_adapter_in_model`` (transformers'
``add_adapter`` needs peft >= 0.22). Dropout is sd-scripts' ``network_dropout``
(``LoRAModule.forward``): on the rank-r hidden ``down(x)``, in training mode only, so the branch
is ``up(dropout(down(x))) * alpha / r``. peft's ``lora_dropout`` would drop the input ``x`` instead, so
peft gets 0 and a forward hook on each ``lora_A`` drops its output (:class:`HiddenDropout`); the
weights and their names, hence the export and the resumable state, are unchanged. sd-scripts'
``network_args`` ``rank_dropout`` (a per-sample, per-rank mask on the same hidden, LoRA only) and
``module_dropout`` (the layer's whole adapter branch skipped, any type) are hooks too
(:class:`RankDropout`, :class:`ModuleDropout`), drawing in sd-scripts' order.

Types (``[network] type``): LoRA, with peft's ``use_rslora`` (scale ``alpha / sqrt(r)``, Kalajdzievski
2023) or ``use_dora`` (Liu et al. 2024); LoHa and LoKr through peft's ports of LyCORIS
(``LoHaConfig``, ``LoKrConfig(decompose_factor, decompose_both)``). Ranks and alphas may differ per
module (sd-scripts' block-wise dims, :mod:`sdxl_probe.train.lora.blocks`) through peft's
``rank_pattern``/``alpha_pattern``; a module of rank 0 gets no layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

ADAPTER = "default"
ATTN_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")
CONV_OWNERS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
DEFAULT_RANK = 8  # peft's r/alpha for modules outside rank_pattern; every target is in it
ADAPTER_PARAM = re.compile(r"\.(lora_|hada_|lokr_)")
TE_LAYER = re.compile(r"(^|\.)encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def unet_targets(unet: torch.nn.Module, preset: str) -> tuple[list[str], list[str]]:
    """(linear-like targets, 3x3 conv targets) of the UNet for ``preset`` (attn | transformer | full)."""
    owners = [name for name, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    linear = []
    for name, module in unet.named_modules():
        if not any(name.startswith(o + ".") for o in owners):
            continue
        is_1x1 = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if preset == "attn":
            if isinstance(module, torch.nn.Linear) and name.endswith(ATTN_LEAVES) and ".attn" in name:
                linear.append(name)
        elif isinstance(module, torch.nn.Linear) or is_1x1:
            linear.append(name)
    convs = []
    if preset == "full":  # sd-scripts with conv_dim: 3x3 convs at conv_dim, the owners' Linears/1x1 at dim
        for owner, m in unet.named_modules():
            if type(m).__name__ not in CONV_OWNERS:
                continue
            for n, c in m.named_modules():
                if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3):
                    convs.append(f"{owner}.{n}")
                elif isinstance(c, torch.nn.Linear) or (isinstance(c, torch.nn.Conv2d) and c.kernel_size == (1, 1)):
                    linear.append(f"{owner}.{n}")
    return linear, convs


def text_encoder_targets(encoder: torch.nn.Module) -> list[str]:
    """The CLIPAttention / CLIPMLP Linears of a text encoder."""
    return [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear) and TE_LAYER.search(n)]


class HiddenDropout:
    """Forward hook on a LoRA down projection: dropout of its output ``(..., r)`` or ``(B, r, H, W)``.

    Uses the global torch RNG (the loop seeds it before each micro-step) and is off in eval mode.
    """

    def __init__(self, p: float):
        self.p = p

    def __call__(self, module: torch.nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(output, p=self.p, training=module.training)


class RankDropout:
    """Forward hook on a LoRA down projection, after :class:`HiddenDropout`: sd-scripts' ``rank_dropout``.

    sd-scripts ``networks/lora.py`` ``LoRAModule.forward``: ``mask = torch.rand((B, r)) > p`` per sample
    and rank, broadcast over the tokens of ``(B, L, r)`` or the pixels of ``(B, r, H, W)``, and the
    branch scaled by ``1 / (1 - p)`` (sd-scripts folds it into ``scale``; here it multiplies the hidden,
    the same up to rounding since ``up`` is linear). Global torch RNG; off in eval mode.
    """

    def __init__(self, p: float):
        self.p = p

    def __call__(self, module: torch.nn.Module, args, lx: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return lx
        rank = lx.size(1) if lx.dim() == 4 else lx.size(-1)
        mask = torch.rand((lx.size(0), rank), device=lx.device) > self.p  # (B, r)
        if lx.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, 1, r): the same ranks for every token of a sample
        elif lx.dim() == 4:
            mask = mask[..., None, None]  # (B, r, 1, 1)
        return lx * mask * (1.0 / (1.0 - self.p))


class ModuleDropout:
    """Pre- and post-forward hooks on a peft layer: sd-scripts' ``module_dropout``.

    sd-scripts ``LoRAModule.forward`` (and LyCORIS' modules) return ``org_forward(x)`` when
    ``torch.rand(1) < p`` in training. Here the pre-hook draws the same number before the branch (so
    network and rank dropout draw nothing for a skipped layer, as in sd-scripts) and sets peft's
    ``_disable_adapters`` for this one call, so the layer returns ``base_layer(x)``: exact for LoRA,
    DoRA (its magnitude is skipped too), LoHa and LoKr. peft's ``enable_adapters`` is not used: it would
    also flip ``requires_grad``. The post-hook (``always_call``) restores the flag. Under gradient
    checkpointing the recompute replays the draw: torch's checkpoint restores the RNG state.
    """

    def __init__(self, p: float):
        self.p = p
        self.saved: list[bool] = []

    def before(self, layer: torch.nn.Module, args) -> None:
        skip = layer.training and bool(torch.rand(1) < self.p)
        self.saved.append(layer._disable_adapters)
        if skip:
            layer._disable_adapters = True

    def after(self, layer: torch.nn.Module, args, output: torch.Tensor) -> None:
        layer._disable_adapters = self.saved.pop()


def add_dropout_hooks(model: torch.nn.Module, *, dropout: float, rank_dropout: float,
                      module_dropout: float) -> None:  # fmt: skip
    """Hook sd-scripts' three dropouts onto the peft layers of ``model`` (a rate of 0 adds no hook).

    The draws follow ``LoRAModule.forward``: module dropout before the branch, then network dropout and
    rank dropout on the down projection's output (hooks run in the order they are registered).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if module_dropout > 0:
            hook = ModuleDropout(module_dropout)
            module.register_forward_pre_hook(hook.before)
            module.register_forward_hook(hook.after, always_call=True)
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and ADAPTER in lora_a:
            if dropout > 0:
                lora_a[ADAPTER].register_forward_hook(HiddenDropout(dropout))
            if rank_dropout > 0:
                lora_a[ADAPTER].register_forward_hook(RankDropout(rank_dropout))


def inject_lora(model: torch.nn.Module, targets: list[str], *, dim: int, alpha: float, dropout: float,
                conv_targets: list[str] = (), conv_dim: int = 4, conv_alpha: float = 1.0, rank_dropout: float = 0.0,
                module_dropout: float = 0.0, kind: NetworkKind | None = None) -> list[torch.nn.Parameter]:  # fmt: skip
    """Freeze ``model``, add LoRA layers (or ``kind``) on ``targets`` (and ``conv_targets`` at their own
    rank); returns the new trainable parameters in module order."""
    ranks = {n: (dim, alpha) for n in targets} | {n: (conv_dim, conv_alpha) for n in conv_targets}
    return inject_adapter(model, ranks, kind=kind or NetworkKind(), dropout=dropout, rank_dropout=rank_dropout,
                          module_dropout=module_dropout)  # fmt: skip


@dataclass(frozen=True)
class NetworkKind:
    """Which adapter and its type-specific options (LyCORIS / peft names)."""

    type: str = "lora"  # lora | loha | lokr
    use_rslora: bool = False  # LoRA: scaling alpha / sqrt(r) (Kalajdzievski 2023, peft use_rslora)
    use_dora: bool = False  # LoRA: DoRA (Liu et al. 2024, peft use_dora)
    factor: int = -1  # LoKr: LyCORIS factor = peft decompose_factor
    decompose_both: bool = False  # LoKr: low-rank left factor too


def adapter_config(kind: NetworkKind, ranks: dict[str, tuple[int, float]]):
    """The peft config that puts ``kind`` on exactly the modules of ``ranks`` (path -> (rank, alpha))."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    names = list(ranks)
    rank_pattern = {f"^{re.escape(n)}$": r for n, (r, _) in ranks.items()}
    alpha_pattern = {f"^{re.escape(n)}$": a for n, (_, a) in ranks.items()}
    common = {"target_modules": names, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}
    if kind.type == "lora":
        return LoraConfig(r=DEFAULT_RANK, lora_alpha=DEFAULT_RANK, lora_dropout=0.0, init_lora_weights=True,
                          use_rslora=kind.use_rslora, use_dora=kind.use_dora, **common)  # fmt: skip
    if kind.type == "loha":  # peft's init: w1_a/w1_b/w2_a kaiming-uniform (FedPara), w2_b zeros: delta starts at 0
        return LoHaConfig(r=DEFAULT_RANK, alpha=DEFAULT_RANK, init_weights=True, **common)
    # peft's LoKr init: w1 (or w1_a) zeros, w2 kaiming-uniform; LyCORIS zeros w2 (or w2_b): both start at 0
    return LoKrConfig(r=DEFAULT_RANK, alpha=DEFAULT_RANK, init_weights=True, decompose_both=kind.decompose_both,
                      decompose_factor=kind.factor, **common)  # fmt: skip


def inject_adapter(model: torch.nn.Module, ranks: dict[str, tuple[int, float]], *, kind: NetworkKind, dropout: float,
                   rank_dropout: float = 0.0, module_dropout: float = 0.0) -> list[torch.nn.Parameter]:  # fmt: skip
    """Freeze ``model``, put ``kind`` on the modules of ``ranks`` (path -> (rank, alpha)); returns the
    new trainable parameters in module order. Dropout and rank dropout (LoRA only) act on the rank-r
    hidden, module dropout on the whole branch (:func:`add_dropout_hooks`)."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    if not ranks:
        return []
    inject_adapter_in_model(adapter_config(kind, ranks), model, adapter_name=ADAPTER)
    add_dropout_hooks(model, dropout=dropout, rank_dropout=rank_dropout, module_dropout=module_dropout)
    params = [p for n, p in model.named_parameters() if is_adapter_param(n)]
    for p in params:
        p.requires_grad_(True)
    return params


def is_adapter_param(name: str) -> bool:
    """A parameter of a LoRA / LoHa / LoKr layer (peft's ``lora_*``, ``hada_*``, ``lokr_*``)."""
    return ADAPTER_PARAM.search(name) is not None


@dataclass
class LoraNetwork:
    """The models that carry LoRA layers and their trainable parameters, per model."""

    params: dict[str, list[torch.nn.Parameter]]  # "unet" | "text_encoder" | "text_encoder_2" -> params
    unet_blocks: dict[int, list[torch.nn.Parameter]] = field(default_factory=dict)  # SDXL block -> UNet params

    def all_params(self) -> list[torch.nn.Parameter]:
        return [p for ps in self.params.values() for p in ps]

    def state_module(self, models: dict[str, torch.nn.Module]) -> torch.nn.Module:
        """A module whose state dict is exactly the LoRA weights (for the resumable state)."""
        holder = torch.nn.Module()
        for model_name in self.params:
            sub = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in models[model_name].named_parameters()
                                          if is_adapter_param(n)})  # fmt: skip
            holder.add_module(model_name, sub)
        return holder


Ranks = Callable[[str, bool], tuple[int, float]]  # (kohya name, is 3x3 conv) -> (rank, alpha); rank 0: no module


def build_network(components, *, preset: str, dim: int, alpha: float, dropout: float, conv_dim: int,
                  conv_alpha: float, train_unet: bool, train_te1: bool, train_te2: bool, seed: int,
                  kind: NetworkKind = NetworkKind(), ranks: Ranks | None = None, rank_dropout: float = 0.0,
                  module_dropout: float = 0.0) -> LoraNetwork:  # fmt: skip
    """Add the network's layers to the chosen models; the base weights are frozen everywhere.

    Args:
        kind: LoRA (with rsLoRA / DoRA), LoHa or LoKr.
        dropout, rank_dropout, module_dropout: sd-scripts' ``network_dropout`` and ``network_args``
            rates (:func:`add_dropout_hooks`), in training mode only.
        ranks: per-module (rank, alpha) from its kohya name (sd-scripts' block-wise dims,
            :func:`sdxl_probe.train.lora.blocks.module_rank`); None: ``dim``/``alpha`` for Linears and
            1x1 convs, ``conv_dim``/``conv_alpha`` for 3x3 convs.

    The init draws from a generator forked from ``seed``, so a run's start is reproducible and
    leaves the global RNG untouched.
    """
    from sdxl_probe.pipeline.kohya_names import kohya_module_names
    from sdxl_probe.train.lora.blocks import block_index

    if ranks is None:
        def ranks(_name: str, conv: bool) -> tuple[int, float]:
            return (conv_dim, conv_alpha) if conv else (dim, alpha)
    for _, model in components.models():
        model.requires_grad_(False)
    params, blocks = {}, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        chosen = {"unet": train_unet, "text_encoder": train_te1, "text_encoder_2": train_te2}
        for name in (n for n, on in chosen.items() if on):
            model = getattr(components, name)
            linear, convs = unet_targets(model, preset) if name == "unet" else (text_encoder_targets(model), [])
            paths = linear + convs
            kohya = kohya_module_names(name, paths, model.config if name == "unet" else None)
            wanted = {p: ranks(k, p in convs) for p, k in zip(paths, kohya, strict=True)}
            kept = {p: ra for p, ra in wanted.items() if ra[0] > 0}
            params[name] = inject_adapter(model, kept, kind=kind, dropout=dropout, rank_dropout=rank_dropout,
                                          module_dropout=module_dropout)  # fmt: skip
            if name == "unet":
                blocks = _params_by_block(model, {p: block_index(k) for p, k in zip(paths, kohya, strict=True)})
    return LoraNetwork({k: v for k, v in params.items() if v}, blocks)


def _params_by_block(unet: torch.nn.Module, block_of: dict[str, int]) -> dict[int, list[torch.nn.Parameter]]:
    """SDXL block -> the adapter parameters of the UNet modules in it (module order)."""
    out: dict[int, list[torch.nn.Parameter]] = {}
    for path, block in block_of.items():
        module = unet.get_submodule(path)
        ps = [p for n, p in module.named_parameters() if is_adapter_param("." + n)]
        if ps:
            out.setdefault(block, []).extend(ps)
    return out


def network_from_config(components, n, *, seed: int, log=print) -> LoraNetwork:
    """The builder for ``[network]``: flattens the section into :func:`build_network`'s arguments, then
    reads ``network_weights`` (sd-scripts ``--network_weights``) into the new layers."""
    from pathlib import Path

    from sdxl_probe.train.lora.blocks import module_rank
    from sdxl_probe.train.lora.export import load_network_weights

    kind = NetworkKind(n.type, n.use_rslora, n.use_dora, n.factor, n.decompose_both)
    network = build_network(components, preset=n.target, dim=n.dim, alpha=n.alpha, dropout=n.dropout,
                            conv_dim=n.conv_dim, conv_alpha=n.conv_alpha, train_unet=n.train_unet,
                            train_te1=n.train_text_encoder_1, train_te2=n.train_text_encoder_2, seed=seed,
                            kind=kind, ranks=lambda name, conv: module_rank(name, conv, n),
                            rank_dropout=n.rank_dropout, module_dropout=n.module_dropout)  # fmt: skip
    if n.network_weights:
        models = {name: getattr(components, name) for name in network.params}
        count = load_network_weights(Path(n.network_weights), models, components.unet.config)
        log(f"network_weights: {count} tensors read from {n.network_weights}")
    return network
