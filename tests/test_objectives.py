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
