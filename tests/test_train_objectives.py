"""The objective's parts equal sd-scripts' formulas, recomputed here from first principles.

Oracles: SDXL's DDPM schedule rebuilt by hand (``scaled_linear`` betas from 0.00085 to 0.012 over 1000
steps, ``abar_t = prod(1 - beta)``), from which SNR, sigma and v follow by their definitions; element-wise
scalar loops for the losses; block means for the area-resized mask; and transcriptions of sd-scripts'
``apply_noise_offset`` and ``pyramid_noise_like`` drawing from the same generator.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdxl_probe.train.lora import objectives


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def abar_by_hand(t: int) -> float:
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    return math.prod(1 - b for b in betas[: t + 1])


TS = [0, 1, 37, 250, 500, 999]


def test_v_target_is_alpha_eps_minus_sigma_x0(scheduler):
    x0, eps = torch.randn(len(TS), 4, 3, 3), torch.randn(len(TS), 4, 3, 3)
    got = objectives.target_for("v_prediction", scheduler, x0, eps, torch.tensor(TS))
    for i, t in enumerate(TS):
        a = abar_by_hand(t)
        torch.testing.assert_close(got[i], math.sqrt(a) * eps[i] - math.sqrt(1 - a) * x0[i], atol=1e-5, rtol=1e-4)
    assert objectives.target_for("epsilon", scheduler, x0, eps, torch.tensor(TS)) is eps


@pytest.mark.parametrize("gamma, v, debiased, scale_v", [(5.0, False, False, False), (5.0, True, False, False),
                                                         (0.0, False, True, False), (0.0, True, True, False),
                                                         (1.0, True, False, True), (0.0, False, False, False)])
def test_snr_weights_follow_the_papers(scheduler, gamma, v, debiased, scale_v):
    got = objectives.snr_weights(torch.tensor(TS), scheduler, min_snr_gamma=gamma, v_prediction=v,
                                 debiased=debiased, scale_v_like_noise=scale_v)  # fmt: skip
    for i, t in enumerate(TS):
        snr = abar_by_hand(t) / (1 - abar_by_hand(t))
        w = 1.0
        if gamma:
            w *= min(snr, gamma) / (snr + 1 if v else snr)
        if scale_v:
            w *= snr / (snr + 1)
        if debiased:
            w /= (min(snr, 1000) + 1) if v else math.sqrt(min(snr, 1000))
        assert got[i].item() == pytest.approx(w, rel=1e-4)


@pytest.mark.parametrize("schedule", ["snr", "exponential", "constant"])
def test_huber_threshold_schedules(scheduler, schedule):
    c, scale = 0.1, 2.0
    got = objectives.huber_threshold(schedule, c, scale, torch.tensor(TS), scheduler)
    for i, t in enumerate(TS):
        a = abar_by_hand(t)
        want = {"snr": (1 - c) / (1 + math.sqrt((1 - a) / a)) ** 2 + c,
                "exponential": math.exp(math.log(c) * t / 1000) * scale, "constant": c * scale}[schedule]  # fmt: skip
        assert got[i].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loss_type", objectives.LOSS_TYPES)
def test_elementwise_losses_by_scalar_loops(loss_type):
    pred, target = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    c = torch.tensor([0.1, 0.7])
    got = objectives.elementwise_loss(pred, target, loss_type, c)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in pred.shape)).tolist():
        d, cb = (pred[tuple(idx)] - target[tuple(idx)]).item(), c[idx[0]].item()
        want = {"l2": d * d, "l1": abs(d), "huber": 2 * cb * (math.sqrt(d * d + cb * cb) - cb),
                "smooth_l1": 2 * (math.sqrt(d * d + cb * cb) - cb)}[loss_type]  # fmt: skip
        assert got[tuple(idx)].item() == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_masked_loss_uses_block_means_of_the_mask():
    loss = torch.rand(2, 4, 3, 5)
    mask = (torch.rand(2, 24, 40) > 0.5).float()  # 8x8 pixel blocks per latent cell
    got = objectives.masked(loss, mask)
    blocks = mask.reshape(2, 3, 8, 5, 8).mean(dim=(2, 4))  # (B, h, w)
    torch.testing.assert_close(got, loss * blocks[:, None])


def test_offset_noise_transcribes_apply_noise_offset():
    """sd-scripts ``apply_noise_offset``, with the adaptive scale, transcribed."""
    latents, noise = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    got = objectives.offset_noise(noise, latents, 0.1, 0.05, False, torch.Generator().manual_seed(7))
    offset = torch.clamp(0.1 + 0.05 * torch.abs(latents.mean(dim=(2, 3), keepdim=True)), 0.0, None)
    want = noise + offset * torch.randn((3, 4, 1, 1), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want)
    g = torch.Generator().manual_seed(7)
    strength = torch.rand((), generator=g).item() * 0.1  # noise_offset_random_strength
    want = noise + strength * torch.randn((3, 4, 1, 1), generator=g)
    got = objectives.offset_noise(noise, latents, 0.1, 0.0, True, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want)
    assert objectives.offset_noise(noise, latents, 0.0, 0.05, True, g) is noise


def test_pyramid_noise_transcribes_pyramid_noise_like():
    """sd-scripts ``pyramid_noise_like`` (``random.random()`` read from the same generator)."""
    noise = torch.randn(2, 4, 16, 12)
    got = objectives.pyramid_noise(noise, 6, 0.3, torch.Generator().manual_seed(3))
    g, want = torch.Generator().manual_seed(3), noise.clone()
    b, c, w, h = want.shape
    u = torch.nn.Upsample(size=(w, h), mode="bilinear")
    for i in range(6):
        r = torch.rand((), generator=g).item() * 2 + 2
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        want += u(torch.randn(b, c, wn, hn, generator=g)) * 0.3**i
        if wn == 1 or hn == 1:
            break
    torch.testing.assert_close(got, want / want.std())
    assert got.std().item() == pytest.approx(1.0, rel=1e-5)


def test_perturbed_noise_adds_gamma_scaled_noise():
    noise = torch.randn(2, 4, 3, 3)
    got = objectives.perturbed_noise(noise, 0.1, False, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1)))
    assert objectives.perturbed_noise(noise, 0.0, True, torch.Generator()) is noise


def test_weight_penalty_by_brute_force():
    params = [torch.randn(3, 2), torch.randn(4)]
    l1 = sum(abs(x) for p in params for x in p.flatten().tolist())
    l2 = sum(x * x for p in params for x in p.flatten().tolist())
    assert objectives.weight_penalty(params, 0.01, 0.0).item() == pytest.approx(0.01 * l1, rel=1e-5)
    assert objectives.weight_penalty(params, 0.01, 0.5).item() == pytest.approx(0.01 * l1 + 0.5 * l2, rel=1e-5)
    assert objectives.weight_penalty(params, 0.0, 0.0).item() == 0.0


# ----------------------------------------------------------------------------- wired into the trainer's step


def _run(tiny_components, ds, out, training):
    import copy

    from sdxl_probe.config import from_dict
    from sdxl_probe.train.lora import loop
    from sdxl_probe.train.lora.config import TrainConfig

    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2},
        "network": {"dim": 4, "alpha": 4.0, "target": "attn"},
        "optimizer": {"unet_lr": 1e-3},
        "training": {"max_train_steps": 2, "seed": 3, "threads": 1, **training},
        "saving": {"output_dir": str(out)}, "logging": {"progress_bar": False},
    })  # fmt: skip
    return loop.setup(cfg, out, resume=False, log=lambda s: None, components=copy.deepcopy(tiny_components))


def _step(run, monkeypatch):
    """The trainer's first optimizer step; returns (its loss, the UNet input, the UNet output, the draws)."""
    from sdxl_probe.train.lora import loop

    seen, real = {}, loop.predict_noise

    def spy(unet, x, t, **kw):
        seen["xt"], seen["out"] = x.detach().clone(), real(unet, x, t, **kw)
        return seen["out"]

    monkeypatch.setattr(loop, "predict_noise", spy)
    draws = loop.draw_micro_batch(run, 0)  # keyed by (seed, micro-step): the same draws the step makes
    loss, _, _ = loop.optimizer_step(run, 0, 0)
    return loss, seen["xt"], seen["out"].detach().float(), draws


@pytest.fixture(scope="module")
def toy_ds(tmp_path_factory):
    from sdxl_probe.toy.dataset import write_dataset

    root = tmp_path_factory.mktemp("objectives") / "ds"
    write_dataset(root, n=2, seed=5, size=32, trigger="zkw")
    return root


LOSS_OPTIONS = [
    ({"loss_type": "l1"}, lambda d, x0, eps, t, s: d.abs().mean()),
    ({"loss_type": "huber", "huber_schedule": "constant", "huber_c": 0.3},
     lambda d, x0, eps, t, s: (2 * 0.3 * (torch.sqrt(d**2 + 0.09) - 0.3)).mean()),
    ({"debiased_estimation_loss": True},
     lambda d, x0, eps, t, s: (d.pow(2).mean(dim=(1, 2, 3)) / torch.sqrt(torch.clamp(s, max=1000))).mean()),
    ({"loss_type": "smooth_l1", "huber_c": 0.2},  # the default "snr" schedule: c_t = (1 - c) / (1 + sigma_t)^2 + c
     lambda d, x0, eps, t, s: (2 * (torch.sqrt(d**2 + snr_c(s, 0.2).view(-1, 1, 1, 1) ** 2)
                                    - snr_c(s, 0.2).view(-1, 1, 1, 1))).mean()),  # fmt: skip
    ({"min_snr_gamma": 5.0},
     lambda d, x0, eps, t, s: (d.pow(2).mean(dim=(1, 2, 3)) * torch.clamp(s, max=5.0) / s).mean()),
    ({"scale_v_pred_loss_like_noise_pred": True},
     lambda d, x0, eps, t, s: (d.pow(2).mean(dim=(1, 2, 3)) * s / (s + 1)).mean()),
    ({"lora_weight_l2": 0.5}, None),
]


def snr_c(snr: torch.Tensor, c: float) -> torch.Tensor:
    """sd-scripts' "snr" Huber schedule from SNR: sigma_t = sqrt((1 - abar) / abar) = 1 / sqrt(SNR)."""
    return (1 - c) / (1 + 1 / snr.sqrt()) ** 2 + c


@pytest.mark.parametrize("training, formula", LOSS_OPTIONS,
                         ids=["l1", "huber", "debiased", "smooth_l1", "min_snr", "v_like_noise", "l2_penalty"])
def test_loss_options_change_the_steps_loss_as_their_formula(tiny_components, toy_ds, tmp_path, monkeypatch,
                                                             training, formula):  # fmt: skip
    """Oracle: the option's formula applied by hand to the step's own UNet output and draws."""
    run = _run(tiny_components, toy_ds, tmp_path / "run", training)
    params = [p.detach().clone() for p in run.network.all_params()]
    loss, _, out, b = _step(run, monkeypatch)
    d = out - b.noise
    snr = torch.tensor([abar_by_hand(int(t)) / (1 - abar_by_hand(int(t))) for t in b.timesteps])
    want = formula(d, b.x0, b.noise, b.timesteps, snr) if formula else d.pow(2).mean() + 0.5 * sum(
        p.pow(2).sum() for p in params)  # fmt: skip
    plain = d.pow(2).mean()
    assert loss == pytest.approx(float(want), rel=1e-4)
    assert abs(loss - float(plain)) > 1e-4 * float(plain)  # the option moved the loss


def test_v_parameterization_regresses_v(tiny_components, toy_ds, tmp_path, monkeypatch):
    """Oracle: v = sqrt(abar) eps - sqrt(1 - abar) x0 from the hand-built schedule."""
    run = _run(tiny_components, toy_ds, tmp_path / "run", {"v_parameterization": True})
    loss, _, out, b = _step(run, monkeypatch)
    a = torch.tensor([abar_by_hand(int(t)) for t in b.timesteps]).view(-1, 1, 1, 1)
    v = a.sqrt() * b.noise - (1 - a).sqrt() * b.x0
    assert loss == pytest.approx(float((out - v).pow(2).mean()), rel=1e-4)


NOISE_OPTIONS = [
    {"noise_offset": 0.1, "adaptive_noise_scale": 0.05},
    {"noise_offset": 0.1, "noise_offset_random_strength": True},
    {"multires_noise_iterations": 4, "multires_noise_discount": 0.3},
    {"ip_noise_gamma": 0.1},
]


@pytest.mark.parametrize("training", NOISE_OPTIONS, ids=["adaptive", "random_strength", "multires", "ip_noise"])
def test_noise_options_change_the_unet_input(tiny_components, toy_ds, tmp_path, monkeypatch, training):
    """Oracle: x_t = sqrt(abar) x0 + sqrt(1 - abar) * noise_in, the DDPM forward process by hand; the
    noise differs from the plain run's, and input perturbation leaves the loss's target unperturbed."""
    from sdxl_probe.train.lora import loop

    b0 = loop.draw_micro_batch(_run(tiny_components, toy_ds, tmp_path / "plain", {}), 0)
    run = _run(tiny_components, toy_ds, tmp_path / "run", training)
    loss, xt, out, b = _step(run, monkeypatch)
    a = torch.tensor([abar_by_hand(int(t)) for t in b.timesteps]).view(-1, 1, 1, 1)
    torch.testing.assert_close(xt.float(), a.sqrt() * b.x0 + (1 - a).sqrt() * b.input_noise, atol=1e-5, rtol=1e-4)
    assert not torch.equal(b.input_noise, b0.noise)
    if "ip_noise_gamma" in training:
        torch.testing.assert_close(b.noise, b0.noise)  # the target stays the plain noise
        assert loss == pytest.approx(float((out - b0.noise).pow(2).mean()), rel=1e-4)


def test_timestep_range_bounds_the_drawn_timesteps(tiny_components, toy_ds, tmp_path):
    """Oracle: sd-scripts draws ``randint(min_timestep, max_timestep)``, so every micro-step's timesteps lie in
    [min, max); the default run draws from [0, 1000) and, over 8 micro-steps, leaves that window."""
    from sdxl_probe.train.lora import loop

    plain = _run(tiny_components, toy_ds, tmp_path / "plain", {})
    ranged = _run(tiny_components, toy_ds, tmp_path / "ranged", {"min_timestep": 900, "max_timestep": 950})
    drawn = torch.cat([loop.draw_micro_batch(ranged, m).timesteps for m in range(8)])
    default = torch.cat([loop.draw_micro_batch(plain, m).timesteps for m in range(8)])
    assert int(drawn.min()) >= 900 and int(drawn.max()) < 950
    assert ((default < 900) | (default >= 950)).any()


def test_offset_strength_options_scale_the_offset_the_step_draws(tiny_components, toy_ds, tmp_path):
    """Oracle: sd-scripts ``apply_noise_offset``. Each run draws the same base noise and the same offset direction
    r ~ N(0, 1)^(B, C, 1, 1), so against the offset-free noise n0 and the plain offset o's noise n1 = n0 + o r:
    adaptive gives n0 + (o + s |mean_hw(x0)|) r; random strength draws u first, so its offset is u o r' (a
    constant per channel, not o r; the formula itself: ``test_offset_noise_transcribes_apply_noise_offset``)."""
    from sdxl_probe.train.lora import loop

    def noise(name, training):
        return loop.draw_micro_batch(_run(tiny_components, toy_ds, tmp_path / name, training), 0)

    b0, b1 = noise("none", {}), noise("offset", {"noise_offset": 0.1})
    r = (b1.noise - b0.noise) / 0.1  # (B, C, h, w), constant over h, w
    assert torch.allclose(r, r[..., :1, :1].expand_as(r), atol=1e-5) and r.abs().max() > 0.1
    b2 = noise("adaptive", {"noise_offset": 0.1, "adaptive_noise_scale": 0.05})
    strength = 0.1 + 0.05 * b2.x0.mean(dim=(2, 3), keepdim=True).abs()
    torch.testing.assert_close(b2.noise, b0.noise + strength * r, atol=1e-5, rtol=1e-5)
    b3 = noise("random", {"noise_offset": 0.1, "noise_offset_random_strength": True})
    d3 = b3.noise - b0.noise  # u o r', r' drawn after u (sd-scripts' order), so not r: constant over h, w
    assert torch.allclose(d3, d3[..., :1, :1].expand_as(d3), atol=1e-5) and not torch.allclose(d3, 0.1 * r, atol=1e-3)
