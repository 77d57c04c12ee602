"""The objectives against hand-computed reference formulas (``docs/objectives.md``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smpo_pipeline.objectives import dpo_loss, dro_loss, sft_loss, smpo_loss


def _random(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g, dtype=torch.float64) * 0.2 for _ in range(4)]


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_dpo_equals_the_reference_formula():
    mw, ml, rw, rl = _random()
    beta = 5000.0
    expected = np.mean([-_log_sigmoid(-0.5 * beta * ((a - b) - (c - d)))
                        for a, b, c, d in zip(mw.tolist(), ml.tolist(), rw.tolist(), rl.tolist(), strict=True)])
    loss, metrics = dpo_loss(mw, ml, rw, rl, beta)
    assert loss.ndim == 0 and abs(loss.item() - expected) < 1e-6
    inside = -0.5 * beta * ((mw - ml) - (rw - rl))
    assert metrics["implicit_accuracy"].item() == pytest.approx((inside > 0).double().mean().item())


def test_smpo_equals_the_reference_formula_and_reduces_to_dpo():
    mw, ml, rw, rl = _random(seed=1)
    p = torch.rand(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    beta, gamma = 5000.0, 10.0
    expected = np.mean([-_log_sigmoid(-0.5 * beta * gamma * (2 * q - 1) * ((a - b) - (c - d)))
                        for a, b, c, d, q in zip(mw.tolist(), ml.tolist(), rw.tolist(), rl.tolist(), p.tolist(), strict=True)])
    assert abs(smpo_loss(mw, ml, rw, rl, beta, p, gamma)[0].item() - expected) < 1e-6
    # p = 1 and γ = 1: γ(2p − 1) = 1, i.e. Diffusion-DPO.
    ones = torch.ones(64, dtype=torch.float64)
    assert abs(smpo_loss(mw, ml, rw, rl, beta, ones, 1.0)[0].item() - dpo_loss(mw, ml, rw, rl, beta)[0].item()) < 1e-6


def test_smpo_pair_at_p_one_half_has_no_gradient():
    mw, ml, rw, rl = (torch.tensor([v], requires_grad=True, dtype=torch.float64) for v in (0.1, 0.2, 0.1, 0.1))
    loss, _ = smpo_loss(mw, ml, rw, rl, 5000.0, torch.tensor([0.5], dtype=torch.float64))
    loss.backward()
    assert mw.grad.item() == 0.0 and ml.grad.item() == 0.0 and loss.item() == pytest.approx(math.log(2))


def test_dro_equals_the_reference_formula():
    me, mp, re, rp = _random(seed=3)
    m = 0.001
    expected = np.mean([max(0.0, (a - c) - (b - d) + m)
                        for a, b, c, d in zip(me.tolist(), mp.tolist(), re.tolist(), rp.tolist(), strict=True)])
    loss, metrics = dro_loss(me, mp, re, rp, m)
    assert abs(loss.item() - expected) < 1e-6 and 0 <= metrics["active_share"].item() <= 1


def test_sft_is_the_mean_mse():
    mse = _random(seed=4)[0]
    assert abs(sft_loss(mse)[0].item() - mse.mean().item()) < 1e-12


def test_min_snr_weights_leave_high_noise_alone_and_shrink_low_noise_as_gamma_over_snr():
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler
    from smpo_pipeline.training.step import timestep_weights

    alphas = build_training_scheduler().alphas_cumprod
    t = torch.tensor([0, 50, 400, 999])
    assert timestep_weights(t, alphas, None) is None  # plain MSE, as the official code
    w = timestep_weights(t, alphas, 5.0)
    snr = alphas[t] / (1 - alphas[t])
    assert torch.allclose(w[snr > 5], 5.0 / snr[snr > 5])
    assert torch.equal(w[snr <= 5], torch.ones_like(w[snr <= 5]))
    assert bool((snr[:2] > 5).all()) and bool((snr[2:] <= 5).all())  # both branches are exercised


def test_min_snr_weights_of_v_prediction_clamp_snr_plus_one_and_keep_the_pure_noise_step():
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler, make_noise_schedule
    from smpo_pipeline.training.step import timestep_weights

    alphas = build_training_scheduler(make_noise_schedule("v_prediction", zero_terminal_snr=True)).alphas_cumprod
    assert alphas[999] == 0  # zero terminal SNR: x_999 is pure noise
    t = torch.tensor([0, 50, 400, 999])
    w = timestep_weights(t, alphas, 5.0, "v_prediction")
    snr = alphas[t] / (1 - alphas[t])
    assert torch.allclose(w, torch.clamp(snr + 1, max=5.0) / (snr + 1))
    assert w[-1] == 1.0 and w[0] < 0.01  # the words-only step counts fully; the near-clean one is shrunk
    with pytest.raises(ValueError, match="prediction_type"):
        timestep_weights(t, alphas, 5.0, "sample")
    with pytest.raises(ValueError, match="zero SNR"):  # ε is undefined where ᾱ = 0: refused, never NaN
        timestep_weights(t, alphas, 5.0, "epsilon")


def test_the_v_target_is_diffusers_velocity_and_recovers_x0_from_x_t():
    from diffusers import DDPMScheduler

    from smpo_pipeline.models.tiny_sdxl import make_noise_schedule
    from smpo_pipeline.training.step import add_noise, prediction_target

    scheduler = DDPMScheduler(**make_noise_schedule("v_prediction", zero_terminal_snr=True))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 300, 900, 999])
    alphas = scheduler.alphas_cumprod
    v = prediction_target(x0, noise, t, alphas, "v_prediction")
    assert torch.allclose(v, scheduler.get_velocity(x0, noise, t), atol=1e-6)
    assert torch.allclose(v[-1], -x0[-1])  # at zero SNR the velocity is the clean latent itself
    a = alphas[t].view(-1, 1, 1, 1)
    assert torch.allclose(a.sqrt() * add_noise(x0, noise, t, alphas) - (1 - a).sqrt() * v, x0, atol=1e-5)
    assert prediction_target(x0, noise, t, alphas, "epsilon") is noise


def test_a_zero_terminal_snr_schedule_needs_v_prediction_and_samples_from_t_999():
    from smpo_pipeline.models.tiny_sdxl import build_sampling_scheduler, make_noise_schedule
    from smpo_pipeline.params import NoiseScheduleParams

    with pytest.raises(ValueError, match="v_prediction"):
        make_noise_schedule("epsilon", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="v_prediction"):
        NoiseScheduleParams(zero_terminal_snr=True)
    sampler = build_sampling_scheduler(make_noise_schedule("v_prediction", zero_terminal_snr=True))
    sampler.set_timesteps(20)
    assert sampler.timesteps[0] == 999 and sampler.config.timestep_spacing == "trailing"
    sdxl = build_sampling_scheduler()
    sdxl.set_timesteps(20)
    assert sdxl.timesteps[0] == 951 and sdxl.config.prediction_type == "epsilon"  # SDXL's "leading" + offset 1
