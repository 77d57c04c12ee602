"""One preference step in each forward-noise mode."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from smpo_pipeline.inversion import InversionConfig, inverse_scheduler, predict_noise, renoise_inversion
from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
from smpo_pipeline.runtime import environment_without_process_group
from smpo_pipeline.training.step import (
    PairBatch,
    draw_timesteps,
    noisy_inputs,
    per_sample_mse,
    preference_loss,
)
from tests.conftest import PROJECT_ROOT


def training_set(tiny_pipeline_dir, root, n=4, probs=(0.9, 0.7, 0.6, 0.8)):
    """A cache of ``n`` pairs of renders (K = 5) under ``root / "cache"`` and their pair table
    (also written to ``root / "pairs.parquet"``): (pipeline, pairs, cache reader, fingerprints)."""
    import pandas as pd
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.pickapic import jpeg_bytes
    from smpo_pipeline.training.cache import CacheReader, Fingerprints, build_cache
    from smpo_pipeline.world.grammar import all_compositions
    from smpo_pipeline.world.render import render

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)
    comps = all_compositions()[:n]
    items = [(f"{k}{i}", c.prompt, jpeg_bytes(render(c))) for i, c in enumerate(comps) for k in "wl"]
    build_cache(pipe, items, root / "cache", InversionConfig(num_steps=5, renoise_iterations=1), batch_size=8, progress=False)
    pairs = pd.DataFrame({"image_w_uid": [f"w{i}" for i in range(n)], "image_l_uid": [f"l{i}" for i in range(n)],
                          "caption": [c.prompt for c in comps], "p": list(probs[:n])})
    pairs.to_parquet(root / "pairs.parquet")
    return pipe, pairs, CacheReader(root / "cache"), Fingerprints.of(pipe, InversionConfig(num_steps=5, renoise_iterations=1))


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
    _, batch, _, alphas = setup
    t = torch.tensor([10, 500, 990])
    x_t, target = noisy_inputs(batch, t, "none", alphas, torch.Generator().manual_seed(1))
    assert torch.equal(target[:3], target[3:])
    a = alphas[t.repeat(2)].view(-1, 1, 1, 1)
    x0 = torch.cat([batch.latents_w, batch.latents_l])
    assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * target, atol=1e-6)


def test_online_inversion_by_an_unchanged_policy_equals_the_cached_trajectory(setup):
    unet, batch, scheduler, alphas = setup
    t = torch.tensor([50, 420, 930])
    cached = noisy_inputs(batch, t, "cached", alphas, None, scheduler)
    online = noisy_inputs(batch, t, "online", alphas, None, scheduler, unet, InversionConfig())
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached, online, strict=True))
    random_noise = noisy_inputs(batch, t, "none", alphas, torch.Generator().manual_seed(0))
    assert not torch.allclose(cached[1], random_noise[1], atol=1e-2)  # the inverted noise is not random noise
    # With a reference that differs from the policy the loss is not log 2 whatever the noise, and it
    # is the same whichever way the trajectory was obtained.
    reference = copy.deepcopy(unet).requires_grad_(False)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    losses = [preference_loss(copy.deepcopy(unet), reference, batch, t, "smpo", 5000.0, 10.0, mode, alphas, None,
                              scheduler, InversionConfig())[0] for mode in ("cached", "online")]
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    assert abs(losses[0].item() - torch.log(torch.tensor(2.0)).item()) > 1e-3


def test_a_step_moves_the_policy_and_never_the_reference(setup):
    unet, batch, _, alphas = setup
    policy, reference = copy.deepcopy(unet), copy.deepcopy(unet).requires_grad_(False)
    before = [p.clone() for p in reference.parameters()]
    loss, metrics = preference_loss(policy, reference, batch, torch.tensor([100, 300, 700]), "dpo", 5000.0, 10.0,
                                    "none", alphas, torch.Generator().manual_seed(0))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters(), strict=True))
    assert set(metrics) >= {"implicit_accuracy", "margin", "model_mse", "ref_mse"}


def test_stratified_timesteps_cover_every_stratum_once_and_uniform_ones_are_the_official_draw():
    t = draw_timesteps(32, (200, 1000), "stratified", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 200 and int(t.max()) < 1000
    assert sorted(((t - 200) // 25).tolist()) == list(range(32))  # one draw in each of 32 strata of 25
    assert not torch.equal(t, t.sort().values)  # in a random order
    again = draw_timesteps(32, (200, 1000), "stratified", torch.Generator().manual_seed(1))
    assert not torch.equal(t.sort().values, again.sort().values)
    uniform = draw_timesteps(8, (0, 1000), "uniform", torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="stratified"):
        draw_timesteps(8, (0, 1000), "sobol")


def test_the_guided_loss_sees_the_samplers_prediction_and_trains_both_branches(setup):
    unet, batch, _, alphas = setup
    t = torch.tensor([100, 500, 900])
    x_t = batch.latents_w
    cond = {"prompt_embeds": batch.prompt_embeds, "pooled": batch.pooled, "time_ids": batch.time_ids}
    dropped_cond = cond | {"prompt_embeds": torch.zeros_like(batch.prompt_embeds),
                           "pooled": torch.zeros_like(batch.pooled)}
    with torch.no_grad():
        c, u, guided = (predict_noise(unet, x_t, t, cond), predict_noise(unet, x_t, t, dropped_cond),
                        predict_noise(unet, x_t, t, cond, 3.0))
        dropped = predict_noise(unet, x_t, t, dropped_cond, 3.0)
    assert torch.allclose(guided, u + 3.0 * (c - u), atol=1e-5)  # what a guidance-3 sampler steps with
    assert not torch.allclose(guided, c, atol=1e-3)
    assert torch.allclose(dropped, u, atol=1e-5)  # a dropped caption is the unconditional branch
    # The losses are those errors: the SFT loss at w 3 is the winners' error of the guided prediction.
    target = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(per_sample_mse(unet, x_t, t, target, *cond.values(), guidance=3.0),
                          (guided - target).pow(2).mean(dim=(1, 2, 3)), atol=1e-5)
    policy, reference = copy.deepcopy(unet), copy.deepcopy(unet).requires_grad_(False)
    losses = {}
    for w in (1.0, 3.0):
        loss, _ = preference_loss(policy, reference, batch, t, "sft", 500.0, 10.0, "none", alphas,
                                  torch.Generator().manual_seed(0), guidance=w)
        losses[w] = loss.item()
    assert losses[1.0] != pytest.approx(losses[3.0], rel=1e-3)
    policy.zero_grad()
    loss, _ = preference_loss(policy, reference, batch, t, "dpo", 500.0, 10.0, "none", alphas,
                              torch.Generator().manual_seed(0), guidance=3.0)
    assert loss.item() == pytest.approx(np.log(2.0), abs=1e-5)  # policy = reference at the start
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


@pytest.mark.parametrize("inversion", ["cached", "online", "none"])
def test_the_training_loop_reads_the_cache_and_trains_with_every_forward_noise(tiny_pipeline_dir, tmp_path, inversion):

    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path, probs=(0.9, 0.7, 0.6, 0.55))
    config = InversionConfig(num_steps=5, renoise_iterations=1)
    data = CachedPairs(pairs, reader, prints, inversion == "cached")
    records = []
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    policy = train_preference(pipe.unet, data, TrainConfig(objective="smpo", beta=5000.0, gamma=10.0, forward_noise=inversion, steps=3, batch_size=2, learning_rate=1e-4, warmup_steps=1, grad_clip=1.0, caption_dropout=0.2, seed=0),
                              config, NOISE_SCHEDULE, lambda step, r: records.append(r))
    assert len(records) == 3 and {"loss", "grad_norm", "lr", "implicit_accuracy", "weighted_margin"} <= set(records[0])
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # the reference is untouched
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())


@pytest.mark.parametrize("objective, inversion", [("dpo", "none"), ("smpo", "online"), ("dro", "none")])
def test_the_training_loop_trains_a_v_prediction_model_on_a_zero_terminal_snr_schedule(tiny_pipeline_dir, tmp_path,
                                                                                       objective, inversion):
    """The loop end to end on a v schedule: finite losses, a moved policy, DRO's sampler on it too."""
    from smpo_pipeline.models.tiny_sdxl import make_noise_schedule
    from smpo_pipeline.training.config import DROConfig, TrainConfig
    from smpo_pipeline.training.data import CachedExperts, CachedPairs, expert_pool
    from smpo_pipeline.training.replay import SamplerConfig
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path, probs=(0.9, 0.7, 0.6, 0.55))
    extra = {"dro": DROConfig(states_per_step=1, buffer_size=4, sampler=SamplerConfig(steps=3))} if objective == "dro" else {}
    config = TrainConfig(objective=objective, beta=5000.0, gamma=10.0, forward_noise=inversion, steps=2, batch_size=2,
                         learning_rate=1e-4, warmup_steps=1, grad_clip=1.0, caption_dropout=0.2, seed=0, **extra)
    experts = CachedExperts(expert_pool(pairs), reader, prints) if objective == "dro" else None
    records = []
    policy = train_preference(pipe.unet, CachedPairs(pairs, reader, prints, False), config,
                              InversionConfig(num_steps=5, renoise_iterations=1),
                              make_noise_schedule("v_prediction", zero_terminal_snr=True),
                              lambda step, r: records.append(r), experts)
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), policy.state_dict().values(),
                                                     strict=True))


def test_the_evaluate_hook_sees_the_policy_on_schedule_and_timesteps_stay_in_their_range(tiny_pipeline_dir, tmp_path,
                                                                                        monkeypatch):

    import smpo_pipeline.training.trainer as trainer
    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path)
    drawn, seen, records = [], [], []
    real_loss = trainer.preference_loss

    def spy(policy, reference, batch, timesteps, *args, **kwargs):
        drawn.append(timesteps.clone())
        return real_loss(policy, reference, batch, timesteps, *args, **kwargs)

    monkeypatch.setattr(trainer, "preference_loss", spy)

    def evaluate(unet) -> dict:
        seen.append((unet.training, next(unet.parameters()).detach().clone()))
        return {"validation_reward": float(len(seen))}

    config = TrainConfig(objective="dpo", beta=5000.0, gamma=10.0, forward_noise="none", steps=5, batch_size=4,
                         learning_rate=1e-3, warmup_steps=1, grad_clip=1.0, caption_dropout=0.0, seed=0,
                         timestep_range=(600, 700), evaluate_every=2)
    train_preference(pipe.unet, CachedPairs(pairs, reader, prints, False), config, InversionConfig(num_steps=5, renoise_iterations=1),
                     NOISE_SCHEDULE, lambda step, r: records.append(r), evaluate=evaluate)
    timesteps = torch.cat(drawn)
    assert timesteps.min() >= 600 and timesteps.max() < 700 and len(timesteps.unique()) > 5
    # Steps 2, 4 and the last (5): in eval mode, on weights that move between calls.
    assert [r.get("validation_reward") for r in records] == [None, 1.0, None, 2.0, 3.0]
    assert not any(training for training, _ in seen) and not torch.equal(seen[0][1], seen[2][1])
    assert all(r["cpu_time"] > 0 for r in records)


@pytest.mark.parametrize(("stage", "precision"), [(2, "fp32"), (3, "fp32"), (2, "bf16")])
def test_the_loop_trains_under_deepspeed_zero_in_process(tiny_pipeline_dir, tmp_path, stage, precision):
    """DeepSpeed ZeRO on CPU (gloo), one process: the policy moves, the reference does not; bf16 is
    DeepSpeed's own mixed precision (bf16 weights, fp32 master copy), and the result comes back fp32."""
    import json

    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path, n=2)
    data = CachedPairs(pairs, reader, prints, True)
    ds = json.loads((PROJECT_ROOT / "conf/base/deepspeed/zero2_cpu.json").read_text()) | {"zero_optimization": {"stage": stage}}
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    records = []
    policy = train_preference(pipe.unet, data, TrainConfig(objective="dpo", beta=5000.0, gamma=10.0, forward_noise="cached", steps=2, batch_size=2, learning_rate=1e-3, warmup_steps=1, grad_clip=1.0, caption_dropout=0.0, seed=0, deepspeed=ds,
                                                       precision=precision),
                              InversionConfig(num_steps=5, renoise_iterations=1), NOISE_SCHEDULE,
                              lambda step, r: records.append(r))
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    # DeepSpeed's CPU backend all-reduces through gloo: no shared-memory op was compiled (44 s).
    from deepspeed.comm import comm

    assert comm.cdb is not None and comm.cdb.shm_comm_op is None
    if precision == "fp32":  # (under bf16 the frozen reference is cast to bf16 in place: memory)
        assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert any(not torch.equal(before[k], v.to(before[k].dtype)) for k, v in policy.state_dict().items())
    assert policy.dtype == torch.float32


@pytest.mark.parametrize("case", ["sdxl-zero2-adafactor", "sdxl-zero3-offload-adafactor", "zero3-lora"])
def test_the_sdxl_deepspeed_configs_and_zero3_with_lora_train(tiny_pipeline_dir, tmp_path, case):
    """The sdxl profile's DeepSpeed configs as written, with its optimizer (Adafactor, which DeepSpeed
    does not list; under offload it steps on the CPU copy), on the tiny model; and ZeRO-3 partitioning
    a LoRA policy whose reference is the same module with adapters off."""
    import json

    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.trainer import train_preference

    pipe, pairs, reader, prints = training_set(tiny_pipeline_dir, tmp_path, n=2)
    data = CachedPairs(pairs, reader, prints, True)
    if case.startswith("sdxl"):
        name = "zero2_8gpu" if "zero2" in case else "zero3_offload"
        ds = json.loads((PROJECT_ROOT / f"conf/sdxl/deepspeed/{name}.json").read_text())
        if "offload_optimizer" in ds["zero_optimization"]:
            ds["zero_optimization"]["offload_optimizer"]["pin_memory"] = False  # no CUDA host memory here
        options = {"optimizer": "adafactor", "precision": "bf16"}
    else:
        ds = json.loads((PROJECT_ROOT / "conf/base/deepspeed/zero2_cpu.json").read_text()) | {"zero_optimization": {"stage": 3}}
        options = {"lora_rank": 4, "lora_alpha": 4}
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    records = []
    policy = train_preference(pipe.unet, data, TrainConfig(objective="dpo", beta=5000.0, gamma=10.0, forward_noise="cached", steps=2, batch_size=2, learning_rate=1e-2, warmup_steps=1, grad_clip=1.0, caption_dropout=0.0, seed=0, deepspeed=ds,
                                                       **options),
                              InversionConfig(num_steps=5, renoise_iterations=1), NOISE_SCHEDULE,
                              lambda step, r: records.append(r))
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert set(policy.state_dict()) == set(before)  # a plain UNet again (LoRA merged)
    assert any(not torch.equal(before[k], v.to(before[k].dtype)) for k, v in policy.state_dict().items())
    assert policy.dtype == torch.float32


# Plain-torch resume is exercised here by DRO (which also restores its buffer and sampler); ZeRO's by
# tests/pipelines/test_train.py, whose two ranks resume from the checkpoint a killed run would leave.
def test_a_run_killed_with_sigkill_resumes_on_the_same_loss_curve(tiny_pipeline_dir, tmp_path):
    import json
    import subprocess
    import sys

    from tests.resumable_run import run

    training_set(tiny_pipeline_dir, tmp_path)

    def args(name, kill_at):
        return [str(tiny_pipeline_dir), str(tmp_path / "cache"), str(tmp_path / "pairs.parquet"), str(tmp_path / name),
                str(tmp_path / f"{name}.jsonl"), kill_at]

    def start(name, kill_at):
        # A fresh process group of its own: not the one earlier in-process DeepSpeed tests left here.
        with (tmp_path / f"{name}.stderr").open("a") as stderr:
            return subprocess.Popen([sys.executable, "-m", "tests.resumable_run", *map(str, args(name, kill_at))],
                                    stderr=stderr, cwd=PROJECT_ROOT,
                                    env=environment_without_process_group() | {"OMP_NUM_THREADS": "1"})

    def tail(name):
        return (tmp_path / f"{name}.stderr").read_text()[-2000:]

    def losses(name):
        return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]

    # The uninterrupted run and the one killed at step 4 side by side: one core each.
    straight, killed = start("straight", -1), start("killed", 4)
    assert straight.wait(timeout=600) == 0, tail("straight")
    assert killed.wait(timeout=600) == -9, tail("killed")
    assert sorted(p.name for p in (tmp_path / "killed").glob("step-*")) == ["step-0000002", "step-0000004"]
    # Resumed by another process (this one, on one thread like the others): only the checkpoint
    # carries the run's state across.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(*args("killed", -1))
    finally:
        torch.set_num_threads(threads)
    straight, interrupted = losses("straight"), losses("killed")
    assert [r["step"] for r in interrupted] == [0, 1, 2, 3, 4, 4, 5]  # step 4 ran, was lost with the kill, ran again
    by_step = {r["step"]: r["loss"] for r in straight}
    for record in interrupted:
        assert record["loss"] == pytest.approx(by_step[record["step"]], abs=1e-6), record
    assert sorted(p.name for p in (tmp_path / "killed").glob("step-*")) == ["step-0000004", "step-0000006"]  # keep_last 2


def test_training_reads_the_models_own_noise_schedule(tiny_pipeline_dir):
    """A model's scheduler comes with it: a pipeline saved with other betas is fine-tuned, inverted
    and sampled by DRO on its own schedule, not on SDXL's."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.training.config import TrainConfig
    from smpo_pipeline.training.trainer import PairLoss

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)
    assert noise_schedule(pipe) == NOISE_SCHEDULE
    pipe.scheduler.register_to_config(beta_end=0.02)
    schedule = noise_schedule(pipe)
    assert schedule["beta_end"] == 0.02
    config = TrainConfig(objective="dpo", beta=5000.0, gamma=10.0, forward_noise="none", steps=1, batch_size=2,
                         learning_rate=1e-4, warmup_steps=1, grad_clip=1.0, caption_dropout=0.0, seed=0)
    loss = PairLoss(None, config, InversionConfig(num_steps=5, renoise_iterations=1), schedule)
    assert torch.allclose(loss.alphas, DDPMScheduler(**schedule).alphas_cumprod)
    assert not torch.allclose(loss.alphas, DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod)
    assert loss.scheduler.config.beta_end == 0.02
    # The cached ReNoise trajectories are keyed by the schedule they were inverted on, not the weights alone.
    from smpo_pipeline.training.cache import Fingerprints

    inversion = InversionConfig(num_steps=5, renoise_iterations=1)
    prints = Fingerprints.of(pipe, inversion)
    assert prints.trajectory_key("u", "c") != Fingerprints.of(StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir),
                                                              inversion).trajectory_key("u", "c")
    assert prints.latent_key("u") == Fingerprints.of(StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir),
                                                     inversion).latent_key("u")


def test_a_v_prediction_model_is_fine_tuned_on_v_targets_for_every_forward_noise(setup):
    """The pair's target is v = √ᾱ ε − √(1−ᾱ) x0 of the same ε (SmPO's τ for the inversion), so that
    x0 = √ᾱ x_t − √(1−ᾱ) v holds for both images of every pair."""
    from diffusers import DDPMScheduler

    from smpo_pipeline.models.tiny_sdxl import make_noise_schedule

    _, batch, scheduler, _ = setup
    alphas = DDPMScheduler(**make_noise_schedule("v_prediction", zero_terminal_snr=True)).alphas_cumprod
    t = torch.tensor([10, 500, 999])
    x0 = torch.cat([batch.latents_w, batch.latents_l])
    a = alphas[t.repeat(2)].view(-1, 1, 1, 1)
    for mode in ("none", "cached"):
        x_t, target = noisy_inputs(batch, t, mode, alphas, torch.Generator().manual_seed(1), scheduler,
                                   prediction_type="v_prediction")
        assert torch.allclose(a.sqrt() * x_t - (1 - a).sqrt() * target, x0, atol=1e-4), mode
        eps = noisy_inputs(batch, t, mode, alphas, torch.Generator().manual_seed(1), scheduler)[1]
        assert not torch.allclose(target, eps, atol=1e-2), mode
