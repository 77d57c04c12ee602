"""One preference step in each forward-noise mode."""

from __future__ import annotations

import copy

import pytest
import torch

from smpo_pipeline.inversion import InversionConfig, inverse_scheduler, renoise_inversion
from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
from smpo_pipeline.training.step import PairBatch, noisy_inputs, preference_loss


@pytest.fixture(scope="module")
def setup(tiny_pipeline_dir):
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    unet = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir).unet
    g = torch.Generator().manual_seed(0)
    b = 3
    latents = torch.randn(2 * b, 4, 16, 16, generator=g) * 0.5
    embeds, pooled = torch.randn(b, 16, 64, generator=g), torch.randn(b, 32, generator=g)
    tids = torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(b, 1)
    scheduler = inverse_scheduler(NOISE_SCHEDULE, 10)
    cond = {"prompt_embeds": embeds.repeat(2, 1, 1), "pooled": pooled.repeat(2, 1), "time_ids": tids.repeat(2, 1)}
    traj = renoise_inversion(unet, latents, cond, scheduler, InversionConfig()).transpose(0, 1)
    batch = PairBatch(latents[:b], latents[b:], embeds, pooled, tids, torch.tensor([0.9, 0.6, 0.5]), traj[:b], traj[b:])
    return unet, batch, scheduler, DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod


def test_random_noise_is_shared_within_a_pair(setup):
    unet, batch, scheduler, alphas = setup
    t = torch.tensor([10, 500, 990])
    x_t, target = noisy_inputs(batch, t, "none", alphas, torch.Generator().manual_seed(1))
    assert torch.equal(target[:3], target[3:])
    a = alphas[t.repeat(2)].view(-1, 1, 1, 1)
    x0 = torch.cat([batch.latents_w, batch.latents_l])
    assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * target, atol=1e-6)


def test_online_inversion_by_an_unchanged_policy_equals_the_cached_trajectory(setup):
    unet, batch, scheduler, alphas = setup
    policy, reference = copy.deepcopy(unet), copy.deepcopy(unet).requires_grad_(False)
    t = torch.tensor([50, 420, 930])
    cached, _ = preference_loss(policy, reference, batch, t, "smpo", 5000.0, 10.0, "cached", alphas, None, scheduler, InversionConfig())
    online, _ = preference_loss(policy, reference, batch, t, "smpo", 5000.0, 10.0, "online", alphas, None, scheduler, InversionConfig())
    assert torch.allclose(cached, online, atol=1e-5)
    # policy == reference: the DPO sigmoid sits at 0, loss log 2, whatever the noise.
    assert cached.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)


def test_a_step_moves_the_policy_and_never_the_reference(setup):
    unet, batch, scheduler, alphas = setup
    policy, reference = copy.deepcopy(unet), copy.deepcopy(unet).requires_grad_(False)
    before = [p.clone() for p in reference.parameters()]
    loss, metrics = preference_loss(policy, reference, batch, torch.tensor([100, 300, 700]), "dpo", 5000.0, 10.0,
                                    "none", alphas, torch.Generator().manual_seed(0))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters(), strict=True))
    assert set(metrics) >= {"implicit_accuracy", "margin", "model_mse", "ref_mse"}
