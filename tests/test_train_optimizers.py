"""``[optimizer] type``, ``optimizer_args`` and ``[training] ema_decay`` change what the trainer does.

Oracles: the upstream optimizer class (imported here directly: torch.optim, lion_pytorch,
prodigyopt, dadaptation, schedulefree) stepped by hand on clones of the trainer's parameters with
the trainer's gradients; the update formulas of AdamW (Loshchilov & Hutter 2019) and of SGD with
Nesterov momentum (torch.optim.SGD docs); diffusers ``EMAModel.get_decay``'s recursion written
out; and, for resume, the uninterrupted run itself (``torch.equal``, no tolerance).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdxl_probe.config import from_dict
from sdxl_probe.errors import ConfigError
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora import loop as loop_module
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import train

QUIET = {"progress_bar": False, "log_every_n_steps": 1000}
LR = {"unet": 1e-3, "text_encoder": 2e-3}


def config(ds: Path, out: Path, *, steps: int = 1, optimizer: dict | None = None, **sections) -> TrainConfig:
    data = {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                    "cache_latents": "memory"},
        "network": {"dim": 4, "alpha": 2.0, "train_text_encoder_1": True},
        "optimizer": {"unet_lr": LR["unet"], "text_encoder_1_lr": LR["text_encoder"], **(optimizer or {})},
        "training": {"max_train_steps": steps, "seed": 3},
        "saving": {"output_dir": str(out), "output_name": "r", "save_last_k": 100},
        "logging": QUIET,
    }  # fmt: skip
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values}
    return from_dict(TrainConfig, data)


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt") / "ds"
    write_dataset(root, n=4, seed=2, size=32, trigger="zkw")
    return root


class StepRecorder:
    """Wraps the trainer's optimizer builder: per step, each group's lr, params before and after, grads."""

    def __init__(self, monkeypatch) -> None:
        self.steps: list[dict] = []
        real = loop_module.build_optimizer

        def build(*args, **kwargs):
            opt = real(*args, **kwargs)
            opt.register_step_pre_hook(self.before)
            opt.register_step_post_hook(self.after)
            return opt

        monkeypatch.setattr(loop_module, "build_optimizer", build)

    def before(self, opt, args, kwargs) -> None:
        self.steps.append({
            "names": [g["name"] for g in opt.param_groups], "lrs": [g["lr"] for g in opt.param_groups],
            "params": [[p.detach().clone() for p in g["params"]] for g in opt.param_groups],
            "grads": [[None if p.grad is None else p.grad.detach().clone() for p in g["params"]]
                      for g in opt.param_groups],  # None: a layer past the penultimate TE state
        })  # fmt: skip

    def after(self, opt, args, kwargs) -> None:
        self.steps[-1]["after"] = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]


def first_step(cfg: TrainConfig, components, run_dir: Path, monkeypatch) -> dict:
    """One optimizer step of the trainer (``setup`` then ``optimizer_step``), recorded around the step."""
    from sdxl_probe.train.lora.loop import optimizer_step, setup

    rec = StepRecorder(monkeypatch)
    run = setup(cfg, run_dir, resume=False, log=lambda s: None, components=copy.deepcopy(components))
    optimizer_step(run, 0, 0)
    return rec.steps[0]


def upstream_step(cls, step: dict, train_mode: bool = False, **kwargs) -> list[list[torch.Tensor]]:
    """The library optimizer built directly on clones of the trainer's params, given its grads, stepped once."""
    groups = []
    for ps, gs, lr in zip(step["params"], step["grads"], step["lrs"], strict=True):
        clones = [torch.nn.Parameter(p.clone()) for p in ps]
        for c, g in zip(clones, gs, strict=True):
            c.grad = None if g is None else g.clone()
        groups.append({"params": clones, "lr": lr})
    opt = cls(groups, **kwargs)
    if train_mode:
        opt.train()
    opt.step()
    return [[p.detach() for p in g["params"]] for g in groups]


def assert_same(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]], exact: bool = True) -> None:
    for ga, gb in zip(a, b, strict=True):
        for x, y in zip(ga, gb, strict=True):
            assert torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-6, atol=1e-9)


def _classes():
    import dadaptation
    import lion_pytorch
    import prodigyopt
    import schedulefree

    return {
        "AdamW": (torch.optim.AdamW, {}, False),
        "Lion": (lion_pytorch.Lion, {}, False),
        "Prodigy": (prodigyopt.Prodigy, {}, False),
        "DAdaptAdam": (dadaptation.DAdaptAdam, {}, False),
        "SGD": (torch.optim.SGD, {"momentum": 0.9}, False),
        "SGDNesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, False),  # sd-scripts' implied args
        "adamwschedulefree": (schedulefree.AdamWScheduleFree, {}, True),  # spelled in any case, as sd-scripts
    }


@pytest.mark.parametrize("name", list(_classes()))
def test_first_update_is_the_upstream_optimizer(name, tiny_components, tiny_ds, tmp_path, monkeypatch):
    """Oracle: the upstream class stepped by hand on the same params and grads; it differs from AdamW's step."""
    cls, kwargs, train_mode = _classes()[name]
    one_lr = name in ("Prodigy", "DAdaptAdam")  # they take one learning rate for all groups
    section = {"type": name, "optimizer_args": {"momentum": 0.9} if name == "SGD" else {}}
    section |= {"text_encoder_1_lr": LR["unet"]} if one_lr else {}
    step = first_step(config(tiny_ds, tmp_path / "r", optimizer=section), tiny_components, tmp_path / "r", monkeypatch)
    assert step["names"] == ["unet", "text_encoder"]
    assert step["lrs"] == [LR["unet"], LR["unet"] if one_lr else LR["text_encoder"]]
    assert_same(step["after"], upstream_step(cls, step, train_mode, **kwargs))
    if name != "AdamW":  # the test tells the optimizers apart (schedule-free's first step is Adam's without decay)
        adamw = upstream_step(torch.optim.AdamW, step)
        assert any(not torch.equal(a, b) for a, b in zip(step["after"][0], adamw[0], strict=True))


def test_the_lora_file_names_the_optimizer(tiny_components, tiny_ds, tmp_path):
    """Oracle: sd-scripts' ``ss_optimizer`` is ``module.Class(key=value,...)`` of the arguments passed."""
    cfg = config(tiny_ds, tmp_path / "r", optimizer={"type": "lion", "optimizer_args": {"betas": [0.9, 0.95]}})
    out = train(cfg, tmp_path / "r", components=copy.deepcopy(tiny_components), log=lambda s: None)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["ss_optimizer"] == "lion_pytorch.Lion(betas=(0.9, 0.95))"


@pytest.mark.slow
def test_optimizer_args_and_section_keys_reach_the_optimizer(tiny_components, tiny_ds, tmp_path, monkeypatch):
    """Oracles: AdamW's first step p(1 - lr wd) - lr g / (|g| + eps) (bias-corrected moments are g and g^2);
    SGD-Nesterov's first step p - lr (1 + mu) g (buffer = g, update g + mu buf)."""
    runs = [("AdamW", {"optimizer_args": {"weight_decay": 0.5, "eps": 1e-3}}),
            ("AdamW", {"weight_decay": 0.5, "eps": 1e-3}),
            ("SGDNesterov", {"optimizer_args": {"momentum": 0.5}}),
            ("SGDNesterov", {})]  # fmt: skip
    for i, (name, section) in enumerate(runs):
        cfg = config(tiny_ds, tmp_path / f"r{i}", optimizer={"type": name, **section})
        step = first_step(cfg, tiny_components, tmp_path / f"r{i}", monkeypatch)
        for ps, gs, after, lr in zip(step["params"], step["grads"], step["after"], step["lrs"], strict=True):
            for p, g, a in zip(ps, gs, after, strict=True):
                if g is None:
                    continue
                if name == "AdamW":
                    expected = p * (1 - lr * 0.5) - lr * g / (g.abs() + 1e-3)
                else:
                    mu = section.get("optimizer_args", {}).get("momentum", 0.9)
                    expected = p - lr * (1 + mu) * g
                assert torch.allclose(a, expected, rtol=1e-5, atol=1e-9), (name, section)


@pytest.mark.slow
def test_ema_is_the_emamodel_recursion(tiny_components, tiny_ds, tmp_path):
    """Oracle: e_1 = w_1, e_k = d_k e_{k-1} + (1 - d_k) w_k with d_k = min(decay, (1 + s) / (10 + s)), s = k - 1
    (diffusers ``EMAModel.get_decay`` without warm-up), over the per-step kohya files."""
    steps, decay = 4, 0.2  # the ramp 2/11 at s=1, then capped at 0.2
    cfg = config(tiny_ds, tmp_path / "e", steps=steps, training={"ema_decay": decay},
                 saving={"save_every_n_steps": 1}, optimizer={"unet_lr": 1e-2, "text_encoder_1_lr": 1e-2})  # fmt: skip
    raw = train(cfg, tmp_path / "e", components=copy.deepcopy(tiny_components), log=lambda s: None)
    ws = [load_file(str(tmp_path / "e" / f"r-step{k:08d}.safetensors")) for k in range(1, steps + 1)]
    ema = load_file(str(tmp_path / "e" / "r-ema.safetensors"))
    assert ema.keys() == ws[0].keys()
    for key in ema:
        e = ws[0][key].clone()
        for k in range(2, steps + 1):
            d = min(decay, (1 + (k - 1)) / (10 + (k - 1)))
            e = d * e + (1 - d) * ws[k - 1][key]
        assert torch.allclose(ema[key], e, rtol=1e-5, atol=1e-8), key
    moved = [k for k in ema if k.endswith("lora_up.weight") and not torch.allclose(ema[k], load_file(str(raw))[k])]
    assert moved  # the EMA file is not the raw weights


@pytest.mark.slow
@pytest.mark.parametrize("name,ema", [("Lion", 0.0), ("Prodigy", 0.0), ("AdamWScheduleFree", 0.5)])
def test_resume_is_bit_identical(name, ema, tiny_components, tiny_ds, tmp_path):
    """Oracle: the uninterrupted 4-step run (optimizer state incl. Prodigy's int step, schedule-free's z and
    train_mode, and the EMA all restored from the pickle-free state)."""
    torch.set_num_threads(1)
    sections = {"optimizer": {"type": name, "text_encoder_1_lr": LR["unet"]}, "training": {"ema_decay": ema},
                "saving": {"save_every_n_steps": 2}}  # fmt: skip
    full = train(config(tiny_ds, tmp_path / "a", steps=4, **sections), tmp_path / "a",
                 components=copy.deepcopy(tiny_components), log=lambda s: None)  # fmt: skip
    train(config(tiny_ds, tmp_path / "b", steps=2, **sections), tmp_path / "b",
          components=copy.deepcopy(tiny_components), log=lambda s: None)  # fmt: skip
    resumed = train(config(tiny_ds, tmp_path / "b", steps=4, **sections), tmp_path / "b", resume=True,
                    components=copy.deepcopy(tiny_components), log=lambda s: None)  # fmt: skip
    names = ["r.safetensors"] + (["r-ema.safetensors"] if ema else [])
    for file in names:
        ta, tb = load_file(str(tmp_path / "a" / file)), load_file(str(tmp_path / "b" / file))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), file
    assert full.name == resumed.name == "r.safetensors"
    losses = [[json.loads(s)["loss"] for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 4


@pytest.mark.parametrize("optimizer,match", [
    ({"type": "Lino"}, "did you mean 'Lion'"),
    ({"type": "Lion", "optimizer_args": {"weight_decai": 0.1}}, "Lion .* takes no argument 'weight_decai'; did you mean 'weight_decay'"),
    ({"type": "Lion", "eps": 1e-6}, "Lion .* takes no argument 'eps'"),
    ({"type": "AdamW8bit"}, "AdamW8bit\" needs a CUDA GPU"),
    ({"optimizer_args": {"lr": 1.0}}, "optimizer_args.lr: set by the trainer"),
    ({"weight_decay": 0.1, "optimizer_args": {"weight_decay": 0.2}}, "set both as a key and in optimizer_args"),
    ({"type": "SGDNesterov", "optimizer_args": {"nesterov": False}}, "use type = \"SGD\""),
])  # fmt: skip
def test_bad_optimizer_input_is_one_line_before_any_weight_loads(optimizer, match, tiny_ds, tmp_path):
    """Oracle: the message; the model source does not exist, so a later check would name it instead."""
    with pytest.raises(ConfigError, match=match) as e:
        cfg = config(tiny_ds, tmp_path / "x", optimizer=optimizer, model={"source": str(tmp_path / "none.safetensors")},
                     training={"device": "cpu"})  # fmt: skip
        train(cfg, tmp_path / "x", log=lambda s: None)
    assert "\n" not in str(e.value)


def test_a_missing_optimizer_package_names_the_install(monkeypatch):
    """Oracle: the message names the package and the extra."""
    from sdxl_probe.train.lora import optimizers

    real = optimizers.importlib.util.find_spec
    monkeypatch.setattr(optimizers.importlib.util, "find_spec", lambda n: None if n == "prodigyopt" else real(n))
    with pytest.raises(ConfigError, match=r"pip install prodigyopt \(or: pip install 'sdxl-probe\[optimizers\]'\)"):
        optimizers.check_optimizer("prodigy", {})


def test_type_spelling_is_case_insensitive_and_saved_canonical():
    """Oracle: sd-scripts lower-cases ``--optimizer_type`` before matching."""
    assert from_dict(TrainConfig, {"optimizer": {"type": "dadaptadam"}}).optimizer.type == "DAdaptAdam"


@pytest.mark.slow
def test_schedule_free_files_hold_the_averaged_weights(tiny_components, tiny_ds, tmp_path, monkeypatch):
    """Oracle: schedulefree's ``eval()`` written out, x = y + (1 - 1/beta1) (z - y), from the trainer's y and z after
    the last step; the saved LoRA holds x (to rounding of the eval/train round trips), not the training point y."""
    beta1 = 0.9  # AdamWScheduleFree's default betas[0]
    last = {}

    def keep(opt, args, kwargs) -> None:
        ps = [p for g in opt.param_groups for p in g["params"]]
        last["y"] = [p.detach().clone() for p in ps]
        last["z"] = [opt.state[p]["z"].clone() if "z" in opt.state[p] else p.detach().clone() for p in ps]

    real = loop_module.build_optimizer

    def build(*args, **kwargs):
        opt = real(*args, **kwargs)
        opt.register_step_post_hook(keep)
        return opt

    monkeypatch.setattr(loop_module, "build_optimizer", build)
    cfg = config(tiny_ds, tmp_path / "s", steps=3, optimizer={"type": "AdamWScheduleFree", "unet_lr": 1e-2,
                                                               "text_encoder_1_lr": 1e-2})  # fmt: skip
    out = train(cfg, tmp_path / "s", components=copy.deepcopy(tiny_components), log=lambda s: None)
    x = [y.lerp(z, 1 - 1 / beta1) for y, z in zip(last["y"], last["z"], strict=True)]
    saved = load_file(str(out))
    file_values = torch.cat([v.flatten() for k, v in saved.items() if not k.endswith(".alpha")]).sort().values
    x_values = torch.cat([t.flatten() for t in x]).sort().values
    y_values = torch.cat([t.flatten() for t in last["y"]]).sort().values
    assert torch.allclose(file_values, x_values, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(file_values, y_values, rtol=1e-5, atol=1e-7)
