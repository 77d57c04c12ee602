"""Diffusion-DRO's online half (sampler, replay buffer, loss) and the trainer's options: LoRA,
Adafactor, gradient checkpointing, bf16, accumulation, cosine schedule."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from smpo_pipeline.inversion import InversionConfig
from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
from smpo_pipeline.training.replay import (
    ReplayBuffer,
    SamplerConfig,
    jittered_timesteps,
    sample_policy_states,
)
from smpo_pipeline.training.step import DROBatch, dro_batch_loss
from tests.test_training_step import training_set


def _alphas():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod


@pytest.fixture(scope="module")
def unet_and_cond(tiny_pipeline_dir):
    from diffusers import StableDiffusionXLPipeline

    unet = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir).unet.eval()
    g = torch.Generator().manual_seed(0)
    cond = {"prompt_embeds": torch.randn(6, 16, 64, generator=g), "pooled": torch.randn(6, 32, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(6, 1)}
    return unet, cond


def test_the_jittered_grid_is_dpm_solvers_twenty_steps_shifted_down():
    assert jittered_timesteps(20, 0) == list(range(999, 48, -50))
    assert jittered_timesteps(20, 49)[-1] == 0 and len(jittered_timesteps(20, 49)) == 20


def test_policy_states_are_states_of_the_samplers_trajectories(unet_and_cond):
    unet, cond = unet_and_cond
    x_t, t, eps = sample_policy_states(unet, cond, (4, 16, 16), NOISE_SCHEDULE, SamplerConfig(), torch.Generator().manual_seed(1))
    assert x_t.shape == eps.shape == (6, 4, 16, 16) and t.shape == (6,)
    assert len(set(t.tolist())) > 1 and all(0 <= v <= 999 for v in t.tolist())
    # The target is the sampling network's own prediction at the stored state (guidance 1).
    with torch.no_grad():
        again = unet(x_t, t, encoder_hidden_states=cond["prompt_embeds"],
                     added_cond_kwargs={"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}).sample
    assert torch.allclose(again, eps, atol=1e-4)
    # Same generator state, same states: the buffer's contents are reproducible on resume.
    again_x, again_t, _ = sample_policy_states(unet, cond, (4, 16, 16), NOISE_SCHEDULE, SamplerConfig(),
                                               torch.Generator().manual_seed(1))
    assert torch.equal(again_x, x_t) and torch.equal(again_t, t)


def test_each_stored_state_is_where_its_own_trajectory_alone_reaches(unet_and_cond):
    """Samples leave the batch as they reach their kept state: what remains must still be each
    sample's own DPM-Solver++ trajectory, with its prompt, its grid and its solver history."""
    from diffusers import DPMSolverMultistepScheduler

    from smpo_pipeline.inversion import predict_noise

    unet, cond = unet_and_cond
    config = SamplerConfig()
    x_t, t, _ = sample_policy_states(unet, cond, (4, 16, 16), NOISE_SCHEDULE, config, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the draws in the sampler's order: grid offsets, kept steps, noise
    offsets, keep = torch.randint(0, 1000 // config.steps, (6,), generator=g), torch.randint(0, config.steps, (6,), generator=g)
    noise = torch.randn((6, 4, 16, 16), generator=g)
    assert len(set(keep.tolist())) > 2
    with torch.no_grad():
        for j in range(6):  # one sample at a time, on its own grid
            scheduler = DPMSolverMultistepScheduler(**NOISE_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2)
            scheduler.set_timesteps(timesteps=jittered_timesteps(config.steps, int(offsets[j])))
            z = noise[j : j + 1] * scheduler.init_noise_sigma
            one = {k: v[j : j + 1] for k, v in cond.items()}
            for step in scheduler.timesteps[: int(keep[j])]:
                z = scheduler.step(predict_noise(unet, z, int(step), one), int(step), z).prev_sample
            assert int(t[j]) == int(scheduler.timesteps[int(keep[j])])
            assert torch.allclose(x_t[j : j + 1], z, atol=1e-4), j


def test_the_replay_buffer_keeps_the_last_states_and_round_trips_through_a_state_dict():
    buffer = ReplayBuffer(capacity=5)
    for start in (0, 3, 6):
        rows = torch.arange(start, start + 3)
        buffer.add(torch.randn(3, 4, 2, 2), rows * 10, torch.randn(3, 4, 2, 2), rows)
    assert len(buffer) == 5 and buffer.rows.tolist() == [4, 5, 6, 7, 8]
    restored = ReplayBuffer(capacity=5)
    restored.load_state_dict(buffer.state_dict())
    a = buffer.draw(4, np.random.default_rng(0))
    b = restored.draw(4, np.random.default_rng(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert ReplayBuffer(3).state_dict() == {}


def test_dro_loss_of_an_unchanged_policy_is_the_margin(unet_and_cond):
    unet, cond = unet_and_cond
    g = torch.Generator().manual_seed(2)
    batch = DROBatch(torch.randn(6, 4, 16, 16, generator=g), cond["prompt_embeds"], cond["pooled"], cond["time_ids"],
                     torch.randn(6, 4, 16, 16, generator=g), torch.tensor([5, 100, 300, 500, 700, 990]),
                     torch.randn(6, 4, 16, 16, generator=g))
    loss, metrics = dro_batch_loss(unet, copy.deepcopy(unet), batch, 0.001, _alphas(), g)
    # θ = ref: both differences vanish and every hinge is exactly the margin.
    assert loss.item() == pytest.approx(0.001, abs=1e-7) and metrics["active_share"].item() == 1.0


def _train(tiny_pipeline_dir, tmp_path, objective="dpo", **options):
    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedExperts, CachedPairs, expert_pool
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path)
    records = []
    config = TrainConfig(objective=objective, beta=5000.0, gamma=10.0, forward_noise="none", steps=3, batch_size=2, learning_rate=1e-3, warmup_steps=1, grad_clip=1.0, caption_dropout=0.2, seed=0, **options)
    policy = train_preference(pipe.unet, CachedPairs(pairs, reader, prints, False), config, InversionConfig(num_steps=5, renoise_iterations=1),
                              NOISE_SCHEDULE, lambda step, r: records.append(r),
                              CachedExperts(expert_pool(pairs), reader, prints))
    return pipe, policy, records


def test_dro_trains_the_policy_from_expert_images_and_its_own_samples(tiny_pipeline_dir, tmp_path):
    from safetensors.torch import load_file

    from smpo_pipeline.training.config import DROConfig

    # One new policy state before each step (train.dro.states_per_step), not one per batch row (2).
    pipe, policy, records = _train(tiny_pipeline_dir, tmp_path, "dro", checkpoint_dir=str(tmp_path / "ckpt"),
                                   checkpoint_every=3, dro=DROConfig(states_per_step=1, buffer_size=8))
    assert len(records) == 3 and {"loss", "active_share", "implicit_accuracy"} <= set(records[0])
    assert records[0]["loss"] == pytest.approx(0.001, abs=1e-6)  # the first step: θ = ref, hinge = margin
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), policy.state_dict().values(), strict=True))
    buffer = load_file(tmp_path / "ckpt/step-0000003/extra-rank0.safetensors")
    assert len(buffer["rows"]) == len(buffer["timesteps"]) == 3  # 3 steps × 1 state


def test_expert_pool_takes_winners_or_the_top_k_images_by_reward():
    import pandas as pd

    from smpo_pipeline.training.data import expert_pool

    pairs = pd.DataFrame({"image_w_uid": ["a", "b"], "image_l_uid": ["c", "d"], "caption": ["x", "y"],
                          "r_w": [0.5, 0.9], "r_l": [0.7, 0.1]})
    assert expert_pool(pairs).uid.tolist() == ["a", "b"]
    top = expert_pool(pairs, "top_k", 2)
    assert top.uid.tolist() == ["b", "c"] and top.caption.tolist() == ["y", "x"]


def test_lora_trains_only_adapters_against_the_adapter_free_reference_and_merges(tiny_pipeline_dir, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe, policy, records = _train(tiny_pipeline_dir, tmp_path, lora_rank=4)
    assert not any(isinstance(m, BaseTunerLayer) for m in policy.modules())  # a plain UNet: stock diffusers loads it
    assert set(policy.state_dict()) == set(pipe.unet.state_dict())
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, pipe.unet.state_dict()[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    # LoRA is initialised so that the policy starts equal to the reference: the first DPO loss is log 2.
    assert records[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)


def test_lora_merge_reproduces_the_adapter_model(tiny_pipeline_dir):
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.training.policy import add_lora, merged_unet

    unet = add_lora(StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir).unet, 4, 8.0).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # trained adapters are not zero
    g = torch.Generator().manual_seed(0)
    x, emb, pooled = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 16, 64, generator=g), torch.randn(2, 32, generator=g)
    kwargs = {"encoder_hidden_states": emb,
              "added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}}
    with torch.no_grad():
        adapted = unet(x, torch.tensor([10, 500]), **kwargs).sample
        merged = merged_unet(unet)(x, torch.tensor([10, 500]), **kwargs).sample
    assert torch.allclose(adapted, merged, atol=1e-4)


@pytest.mark.parametrize(("options", "without"), [
    ({"optimizer": "adafactor", "gradient_checkpointing": True, "lr_schedule": "cosine"}, "gradient_checkpointing"),
    ({"precision": "bf16", "gradient_accumulation": 2}, "precision"),
])
def test_optimizer_checkpointing_precision_and_accumulation_options_train(tiny_pipeline_dir, tmp_path, options, without):
    """Each option takes effect and changes only what it should: gradient checkpointing recomputes
    activations and gives the same weights; bf16 autocast changes the MSEs, within bf16's error;
    Adafactor steps differently from AdamW; the cosine schedule decays."""
    pipe, policy, records = _train(tiny_pipeline_dir, tmp_path / "with", **options)
    assert len(records) == 3 and all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in records)
    assert policy.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), policy.state_dict().values(), strict=True))
    _, reference, reference_records = _train(tiny_pipeline_dir, tmp_path / "without",
                                             **{k: v for k, v in options.items() if k != without})
    pairs = list(zip(policy.state_dict().values(), reference.state_dict().values(), strict=True))
    if without == "gradient_checkpointing":
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in pairs)
        assert records[-1]["lr"] < records[0]["lr"]  # warmup 1 step, then the cosine decays
        _, adamw, _ = _train(tiny_pipeline_dir, tmp_path / "adamw", lr_schedule="cosine")
        assert any(not torch.allclose(a, b, atol=1e-6)
                   for a, b in zip(policy.state_dict().values(), adamw.state_dict().values(), strict=True))
    else:  # the first step runs on the same weights: bf16 changes its MSEs by bf16's rounding only
        first = np.array([records[0]["model_mse"], records[0]["ref_mse"]])
        first_fp32 = np.array([reference_records[0]["model_mse"], reference_records[0]["ref_mse"]])
        assert not np.array_equal(first, first_fp32) and np.allclose(first, first_fp32, rtol=0.02)


def test_an_accumulated_step_logs_the_mean_over_its_micro_batches(tiny_pipeline_dir, tmp_path):
    """With lr = 0 the policy never moves, so 3 steps of 2 micro-batches draw exactly the micro-batches
    of 6 plain steps; each record must be the mean of its two (the reference's MSE differs per batch)."""
    from dataclasses import replace

    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path)
    config = TrainConfig(objective="dpo", beta=5000.0, gamma=10.0, forward_noise="none", steps=6, batch_size=2, learning_rate=0.0, warmup_steps=1, grad_clip=1.0, caption_dropout=0.2, seed=0)
    runs = {}
    for accumulation, steps in [(1, 6), (2, 3)]:
        runs[accumulation] = []
        train_preference(copy.deepcopy(pipe.unet), CachedPairs(pairs, reader, prints, False),
                         replace(config, steps=steps, gradient_accumulation=accumulation), InversionConfig(num_steps=5, renoise_iterations=1),
                         NOISE_SCHEDULE, lambda step, r, out=runs[accumulation]: out.append(r))
    plain = np.array([r["ref_mse"] for r in runs[1]])
    assert len(set(plain.round(6))) > 1  # the micro-batches differ, so the last one is not the mean
    assert [r["ref_mse"] for r in runs[2]] == pytest.approx(plain.reshape(3, 2).mean(axis=1), rel=1e-5)
    assert [r["loss"] for r in runs[2]] == pytest.approx([r["loss"] for r in runs[1][::2]], rel=1e-5)


def test_fp16_without_deepspeed_is_refused(unet_and_cond):
    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.trainer import train_preference

    config = TrainConfig(objective="dpo", beta=5000.0, gamma=10.0, forward_noise="none", steps=3, batch_size=2, learning_rate=1e-3, warmup_steps=1, grad_clip=1.0, caption_dropout=0.2, seed=0, precision="fp16")
    with pytest.raises(ValueError, match=r"fp16 needs DeepSpeed.s loss scaling"):
        train_preference(unet_and_cond[0], None, config, InversionConfig(num_steps=5, renoise_iterations=1), NOISE_SCHEDULE)
