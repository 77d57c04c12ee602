"""The training loop for DPO, SmPO and DRO over the training cache, in the spirit of nanoGPT's:
set up, then for each step: (refresh) → batch → loss → backward → step → log → checkpoint.

Everything that varies is a small object with one job, built once before the loop:

- the **engine** (``training.engine``): plain PyTorch or DeepSpeed ZeRO; it owns the optimizer,
  the LR schedule, gradient accumulation, clipping and precision;
- the **policy and reference** (``training.policy``): a full fine-tune against the frozen base, or
  LoRA adapters against the same UNet with its adapters off;
- the **batch loss**: ``PairLoss`` (DPO, SmPO: a batch of cached pairs) or ``DROLoss`` (expert
  images against states of the policy's own samples from its replay buffer, ``training.replay``);
- **checkpoints** (``training.checkpoints``): every ``checkpoint_every`` steps; a run resumes from
  the latest one and continues the same loss curve.

One process in-process, or one rank of a ``torchrun`` launch (``training.launch``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from smpo_pipeline.inversion import InversionConfig, inverse_scheduler
from smpo_pipeline.models.conditioning import drop_captions
from smpo_pipeline.models.tiny_sdxl import build_training_scheduler
from smpo_pipeline.params import engine_problem
from smpo_pipeline.runtime import rank_and_world
from smpo_pipeline.training import checkpoints
from smpo_pipeline.training.config import TrainConfig
from smpo_pipeline.training.data import CachedExperts, CachedPairs
from smpo_pipeline.training.engine import DeepSpeedEngine, TorchEngine, build_engine
from smpo_pipeline.training.policy import merged_unet, plain_unet, policy_and_reference
from smpo_pipeline.training.replay import ReplayBuffer, sample_policy_states
from smpo_pipeline.training.step import DROBatch, draw_timesteps, dro_batch_loss, preference_loss


class PairLoss:
    """DPO and SmPO: the objective on a batch of cached pairs, captions dropped at random."""

    def __init__(self, data: CachedPairs, config: TrainConfig, inversion: InversionConfig, schedule: dict) -> None:
        self.data, self.config, self.inversion = data, config, inversion
        self.alphas = build_training_scheduler(schedule).alphas_cumprod
        self.prediction_type = schedule.get("prediction_type", "epsilon")  # the target: ε or v
        self.scheduler = inverse_scheduler(schedule, inversion.num_steps)  # SmPO's online ReNoise

    def before_step(self, step: int, engine: TorchEngine, rng, generator) -> None:
        pass

    def __call__(self, policy, reference, rng, generator):
        c = self.config
        rows = rng.choice(len(self.data), c.batch_size, replace=len(self.data) < c.batch_size)
        batch = self.data.batch(rows, generator if c.latents == "sample" else None)
        drop = torch.rand(len(batch), generator=generator) < c.caption_dropout
        batch.prompt_embeds, batch.pooled = drop_captions(batch.prompt_embeds, batch.pooled, drop)
        timesteps = draw_timesteps(len(batch), c.timestep_range, c.timestep_sampling, generator)
        return preference_loss(policy, reference, batch, timesteps, c.objective, c.beta, c.gamma, c.forward_noise,
                               self.alphas, generator, self.scheduler, self.inversion, c.min_snr_gamma,
                               self.prediction_type, c.loss_guidance)

    def state(self) -> tuple[dict, dict | None]:
        return {}, None

    def load_state(self, extra: dict, shared: dict) -> None:
        pass


class DROLoss:
    """Diffusion-DRO: expert images (offline half) against policy states from the replay buffer
    (online half). Before each step the buffer gets ``dro.states_per_step`` states (default
    ``batch_size``) sampled by the policy, or by its copy of at most ``refresh_every`` steps ago (M > 1)."""

    def __init__(self, experts: CachedExperts, config: TrainConfig, schedule: dict, template) -> None:
        self.experts, self.config, self.schedule = experts, config, schedule
        self.alphas = build_training_scheduler(schedule).alphas_cumprod
        self.prediction_type = schedule.get("prediction_type", "epsilon")
        self.template = template  # a UNet of the policy's architecture, for the lagging sampler's copy
        self.buffer = ReplayBuffer(config.dro.buffer_size)
        self.sampler_net = None  # M > 1: the policy as of its last refresh; None: the policy itself

    def before_step(self, step: int, engine: TorchEngine, rng, generator) -> None:
        c = self.config
        if c.dro.refresh_every > 1 and step % c.dro.refresh_every == 0:
            if c.lora_rank:
                with engine.whole_weights():
                    state = merged_unet(engine.policy).state_dict()
            else:
                state = engine.full_state()
            self.load_state({}, state)
        net = self.sampler_net if self.sampler_net is not None else engine.policy
        n = c.dro.states_per_step or c.batch_size
        rows = rng.choice(len(self.experts), n, replace=len(self.experts) < n)
        embeds, pooled, time_ids = self.experts.conditioning(self.experts.pairs.caption.iloc[rows])
        was_training = engine.policy.training
        engine.policy.eval()
        with engine.autocast():
            x_t, timesteps, eps = sample_policy_states(net, {"prompt_embeds": embeds, "pooled": pooled,
                                                             "time_ids": time_ids}, self.experts.latent_shape,
                                                       self.schedule, c.dro.sampler, generator)
        engine.policy.train(was_training)
        self.buffer.add(x_t.float(), timesteps, eps.float(), rows)

    def __call__(self, policy, reference, rng, generator):
        c = self.config
        x_t, timesteps, targets, rows = self.buffer.draw(c.batch_size, rng)
        latents, (embeds, pooled, time_ids) = self.experts.experts(rows.tolist(),
                                                                   generator if c.latents == "sample" else None)
        embeds, pooled = drop_captions(embeds, pooled, torch.rand(len(rows), generator=generator) < c.caption_dropout)
        return dro_batch_loss(policy, reference, DROBatch(latents, embeds, pooled, time_ids, x_t, timesteps, targets),
                              c.dro.margin, self.alphas, generator, c.min_snr_gamma, self.prediction_type)

    def state(self) -> tuple[dict, dict | None]:
        shared = None if self.sampler_net is None else \
            {k: v.contiguous() for k, v in self.sampler_net.state_dict().items()}
        return self.buffer.state_dict(), shared

    def load_state(self, extra: dict, shared: dict) -> None:
        self.buffer.load_state_dict(extra)
        if shared:
            self.sampler_net = copy.deepcopy(self.template).eval().requires_grad_(False)
            self.sampler_net.load_state_dict(shared)


def _check(config: TrainConfig, world_size: int, experts) -> None:
    if problem := engine_problem(config.precision, config.deepspeed is not None, world_size):
        raise ValueError(problem)
    if config.objective == "dro" and experts is None:
        raise ValueError("DRO trains on expert images: pass experts=CachedExperts(...)")


def _due(every: int, done: int, total: int) -> bool:
    return bool(every) and (done % every == 0 or done == total)


def _evaluate(evaluate: Callable[[torch.nn.Module], dict], engine: TorchEngine) -> dict:
    """``evaluate(policy)`` in eval mode, without gradients, on whole weights (ZeRO-3)."""
    policy = engine.policy
    was_training = policy.training
    policy.eval()
    with torch.no_grad(), engine.whole_weights():
        metrics = evaluate(policy)
    policy.train(was_training)
    return metrics


def train_preference(base_unet, data: CachedPairs, config: TrainConfig, inversion: InversionConfig,
                     noise_schedule: dict, log: Callable[[int, dict], None] | None = None, experts: CachedExperts | None = None,
                     evaluate: Callable[[torch.nn.Module], dict] | None = None):
    """Fine-tune a copy of ``base_unet`` on ``data`` (DRO: on ``experts``); returns the trained UNet
    as a plain fp32 diffusers module (LoRA merged). ``noise_schedule`` is the model's own
    (``models.tiny_sdxl.noise_schedule(pipe)``): its ᾱ, the inversion's grid and DRO's sampler. ``base_unet`` itself becomes the frozen reference
    of a full fine-tune: eval, no gradients, and under DeepSpeed's bf16/fp16 cast in place.
    ``evaluate(policy)`` (every ``config.evaluate_every`` steps and at the end) returns metrics, e.g.
    a validation reward, logged with that step's record."""
    rank, world_size = rank_and_world()
    _check(config, world_size, experts)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + rank)  # each rank draws its own batches
    generator = torch.Generator().manual_seed(config.seed + rank)
    policy, reference = policy_and_reference(base_unet, config.lora_rank, config.lora_alpha,
                                             config.gradient_checkpointing)
    engine = build_engine(policy, config)
    if isinstance(engine, DeepSpeedEngine) and config.precision != "fp32" and not config.lora_rank:
        reference = engine.cast_like_policy(reference)
    batch_loss = DROLoss(experts, config, noise_schedule, base_unet) if config.objective == "dro" \
        else PairLoss(data, config, inversion, noise_schedule)
    first, ranks = 0, {"rank": rank, "world_size": world_size}
    if config.checkpoint_dir and (found := checkpoints.latest(config.checkpoint_dir)) is not None:
        first, extra, shared = engine.restore(found, generator, rng, **ranks)
        batch_loss.load_state(extra, shared)

    bar = tqdm(range(first, config.steps), initial=first, total=config.steps, desc=f"train {config.objective}",
               unit="step", mininterval=2, disable=rank != 0)
    for step in bar:
        start, cpu_start = time.perf_counter(), time.process_time()
        batch_loss.before_step(step, engine, rng, generator)
        sums = {}  # loss and metrics summed over the micro-batches: the record is their mean
        for _ in range(config.gradient_accumulation):
            with engine.autocast():
                loss, metrics = batch_loss(engine.module, reference, rng, generator)
            for name, value in {"loss": loss, **metrics}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            engine.backward(loss)
        grad_norm = engine.step()
        record = {name: (total / config.gradient_accumulation).item() for name, total in sums.items()}
        record |= {"grad_norm": grad_norm, "lr": engine.lr, "step_time": time.perf_counter() - start,
                   "cpu_time": time.process_time() - cpu_start}
        done = step + 1
        if evaluate and _due(config.evaluate_every, done, config.steps):
            record |= _evaluate(evaluate, engine)
        if log:
            log(step, record)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['implicit_accuracy']:.2f}")
        if config.checkpoint_dir and _due(config.checkpoint_every, done, config.steps):
            extra, shared = batch_loss.state()
            engine.save(config.checkpoint_dir, done, generator, rng, extra=extra, shared=shared, **ranks)
    return plain_unet(base_unet, engine.full_state(), config.lora_rank, config.lora_alpha)
