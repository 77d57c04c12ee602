"""The training loop for DPO, SmPO and DRO over the training cache — small enough to hold in one's
head: draw a batch (pairs; or, for DRO, expert images and policy states from the replay buffer),
read its cached latents / embeddings / trajectories, compute the objective, backward, step, log.

Plain PyTorch, or DeepSpeed ZeRO (stage 0–3 from a config) around the policy when
``TrainConfig.deepspeed`` is given; one process in-process, or one rank of a ``torchrun`` launch.
Options: AdamW or Adafactor, warmup then constant or cosine LR, gradient accumulation and clipping,
gradient checkpointing, fp32/bf16/fp16, and LoRA (peft) — then the reference is the same UNet with
its adapters disabled, so no second copy is held. The frozen reference is never handed to the engine.
With ``checkpoint_dir`` it checkpoints every ``checkpoint_every`` steps and resumes from the latest
checkpoint, continuing the same loss curve.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from smpo_pipeline.inversion import InversionConfig, inverse_scheduler
from smpo_pipeline.models.conditioning import drop_captions
from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
from smpo_pipeline.training import checkpoints
from smpo_pipeline.training.replay import ReplayBuffer, SamplerConfig, sample_policy_states
from smpo_pipeline.training.step import DROBatch, PairBatch, dro_batch_loss, preference_loss
from smpo_pipeline.training_cache import CacheReader, Fingerprints, rank_and_world

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA scripts


@dataclass(frozen=True, kw_only=True)  # built by name only: reordering fields must not swap values
class DROConfig:
    margin: float = 0.001  # official
    refresh_every: int = 1  # M: the sampling network is the policy of M steps ago at most (official 1)
    buffer_size: int = 64  # policy states kept; each refresh adds batch_size of them
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):  # from a JSON spec (the torchrun launch)
            object.__setattr__(self, "sampler", SamplerConfig(**self.sampler))


@dataclass(frozen=True, kw_only=True)  # built by name only: β and γ are both floats, in any order
class TrainConfig:
    objective: str  # dpo | smpo | dro
    beta: float
    gamma: float
    inversion: str  # cached | online | none
    steps: int  # optimiser steps
    batch_size: int  # pairs (DRO: expert/policy rows) per micro-batch
    learning_rate: float
    warmup_steps: int
    grad_clip: float
    caption_dropout: float
    seed: int
    deepspeed: dict | None = None  # a DeepSpeed config (ZeRO stage, offload, ...); None: plain torch
    checkpoint_dir: str | None = None  # resume from its latest checkpoint, save every checkpoint_every
    checkpoint_every: int = 50
    keep_last: int = 2
    gradient_accumulation: int = 1
    optimizer: str = "adamw"  # adamw | adafactor
    weight_decay: float = 0.01
    lr_schedule: str = "constant"  # after warmup: constant (official) | cosine
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16
    lora_rank: int = 0  # 0: full fine-tune
    lora_alpha: float | None = None  # None: = rank
    timestep_range: tuple[int, int] = (0, 1000)  # pairs' t drawn uniformly from [low, high)
    latents: str = "sample"  # sample: a fresh VAE posterior sample per step (official) | mean
    min_snr_gamma: float | None = None  # per-sample MSE weighted by min(SNR, γ)/SNR; None: plain MSE (official)
    evaluate_every: int = 0  # call the evaluate hook every N steps and at the end (0: never)
    dro: DROConfig = field(default_factory=DROConfig)

    def __post_init__(self) -> None:
        if isinstance(self.dro, dict):
            object.__setattr__(self, "dro", DROConfig(**self.dro))


class CachedPairs:
    """Training pairs whose tensors come from the cache (``PairBatch`` per list of rows)."""

    COLUMNS = ("image_w_uid", "image_l_uid", "caption", "p")  # every value a training run reads from the pairs

    def __init__(self, pairs, reader: CacheReader, prints: Fingerprints, with_trajectories: bool) -> None:
        self.pairs = pairs.reset_index(drop=True)
        self.reader, self.prints, self.with_trajectories = reader, prints, with_trajectories

    def __len__(self) -> int:
        return len(self.pairs)

    def latents(self, uids, generator: torch.Generator | None = None) -> torch.Tensor:
        """The images' VAE latents: a fresh posterior sample ``mean + std · ε`` with ``generator``
        (training, as the official code's ``latent_dist.sample()``), the posterior mean without."""
        keys = [self.prints.latent_key(u) for u in uids]
        mean = torch.stack([self.reader.get(k, "latent").float() for k in keys])
        if generator is None:
            return mean
        std = torch.stack([self.reader.get(k, "latent_std").float() for k in keys])
        return mean + std * torch.randn(mean.shape, generator=generator)

    def conditioning(self, captions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = [self.prints.text_key(c) for c in captions]
        return tuple(torch.stack([self.reader.get(k, name).float() for k in keys])
                     for name in ("prompt_embeds", "pooled", "time_ids"))

    def batch(self, rows, generator: torch.Generator | None = None) -> PairBatch:
        """The pairs of ``rows``; with ``generator``, posterior samples of their latents, except with
        cached trajectories, which were inverted from the posterior mean and must start from it."""
        sel = self.pairs.iloc[list(rows)]
        g = None if self.with_trajectories else generator
        batch = PairBatch(self.latents(sel.image_w_uid, g), self.latents(sel.image_l_uid, g),
                          *self.conditioning(sel.caption), torch.tensor(sel.p.to_numpy(), dtype=torch.float32))
        if self.with_trajectories:
            r, p = self.reader, self.prints
            batch.trajectory_w = torch.stack([r.get(p.trajectory_key(u, c), "trajectory").float()
                                              for u, c in zip(sel.image_w_uid, sel.caption, strict=True)])
            batch.trajectory_l = torch.stack([r.get(p.trajectory_key(u, c), "trajectory").float()
                                              for u, c in zip(sel.image_l_uid, sel.caption, strict=True)])
        return batch


class CachedExperts(CachedPairs):
    """DRO's offline half: expert images (columns ``uid``, ``caption``) read from the cache."""

    def __init__(self, experts, reader: CacheReader, prints: Fingerprints) -> None:
        super().__init__(experts, reader, prints, with_trajectories=False)

    def experts(self, rows, generator: torch.Generator | None = None):
        sel = self.pairs.iloc[list(rows)]
        return self.latents(sel.uid, generator), self.conditioning(sel.caption)

    @functools.cached_property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents(self.pairs.uid.iloc[:1]).shape[1:])


def expert_pool(pairs, source: str = "winners", top_k: int | None = None):
    """DRO's expert images (``uid``, ``caption``): the preferred image of every pair, or the
    ``top_k`` images by reward over both sides of every pair, as the DRO paper picks them
    (human labels unused)."""
    import pandas as pd

    if source == "winners":
        return pd.DataFrame({"uid": pairs.image_w_uid, "caption": pairs.caption}).reset_index(drop=True)
    if source == "top_k":
        images = pd.concat([
            pd.DataFrame({"uid": pairs.image_w_uid, "caption": pairs.caption, "reward": pairs.r_w}),
            pd.DataFrame({"uid": pairs.image_l_uid, "caption": pairs.caption, "reward": pairs.r_l}),
        ]).drop_duplicates("uid")
        return images.nlargest(top_k or len(images), "reward", keep="first")[["uid", "caption"]].reset_index(drop=True)
    raise ValueError(f"unknown expert source {source!r}: winners or top_k")


class AdaptersDisabled(torch.nn.Module):
    """The LoRA policy with its adapters switched off: the frozen reference, without a second copy."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, *args, **kwargs):
        self.unet.disable_adapters()
        try:
            return self.unet(*args, **kwargs)
        finally:
            self.unet.enable_adapters()


def add_lora(unet, rank: int, alpha: float | None):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGETS)))
    return unet


def merged_unet(policy):
    """A plain UNet (no peft layers) with the LoRA adapters folded into its weights."""
    merged = copy.deepcopy(policy)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def _optimizer(params, config: TrainConfig):
    if config.optimizer == "adafactor":
        # torch's Adafactor: factored second moments (memory), a relative LR off; used by the official SDXL runs.
        return torch.optim.Adafactor(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: adamw or adafactor")


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "cosine":
            progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _deepspeed_config(config: TrainConfig) -> dict:
    ds = config.deepspeed | {"train_micro_batch_size_per_gpu": config.batch_size,
                             "gradient_accumulation_steps": config.gradient_accumulation,
                             "gradient_clipping": config.grad_clip}
    ds.pop("train_batch_size", None)  # derived: micro-batch × accumulation × world size
    if config.precision in ("bf16", "fp16"):
        ds[config.precision] = ds.get(config.precision, {}) | {"enabled": True}
    if config.optimizer == "adafactor":
        # DeepSpeed vouches only for the optimizers it lists (Adam, AdamW, Adagrad, Lion) and refuses
        # others at start-up. torch's Adafactor trains under ZeRO 2 and 3 (tested); note that ZeRO
        # hands it flat 1-D partitions, so its second moments are kept whole, not factored.
        ds.setdefault("zero_allow_untested_optimizer", True)
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload != "none":
        # The trainer passes a torch optimizer (so DeepSpeed's cpu_adam is never compiled), which then
        # steps on the offloaded CPU copy; DeepSpeed refuses that unless it is told it is intended.
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    return ds


def _whole_weights(module, engine):
    """A context in which ``module``'s parameters are whole (ZeRO-3 partitions them between steps)."""
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()))
    return contextlib.nullcontext()


def _full_state(module, engine) -> dict[str, torch.Tensor]:
    """The module's weights as plain tensors (gathered first when ZeRO-3 partitions them)."""
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_preference(base_unet, data: CachedPairs, config: TrainConfig, inversion: InversionConfig,
                     alphas_cumprod, log: Callable[[int, dict], None] | None = None, experts: CachedExperts | None = None,
                     evaluate: Callable[[torch.nn.Module], dict] | None = None):
    """Fine-tune a copy of ``base_unet`` on ``data`` (DRO: on ``experts``); returns the trained UNet
    as a plain fp32 diffusers module (LoRA merged). ``base_unet`` itself becomes the frozen reference:
    it is switched to eval, without gradients, and under DeepSpeed's bf16/fp16 cast in place.
    ``evaluate(policy)`` (every ``config.evaluate_every`` steps and at the end) returns metrics, e.g.
    a validation reward, logged with that step's record."""
    rank, world_size = rank_and_world()
    if world_size > 1 and config.deepspeed is None:
        raise ValueError("several processes need DeepSpeed (it averages the gradients): set a deepspeed config")
    if config.objective == "dro" and experts is None:
        raise ValueError("DRO trains on expert images: pass experts=CachedExperts(...)")
    if config.precision == "fp16" and config.deepspeed is None:
        raise ValueError("fp16 needs loss scaling: use it under DeepSpeed (its fp16 section), or bf16")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + rank)  # each rank draws its own batches
    generator = torch.Generator().manual_seed(config.seed + rank)
    if config.lora_rank:
        policy = add_lora(copy.deepcopy(base_unet), config.lora_rank, config.lora_alpha).train()
        reference = AdaptersDisabled(policy)
    else:
        policy = copy.deepcopy(base_unet).train().requires_grad_(True)
        reference = base_unet.eval().requires_grad_(False)
    if config.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    optimizer = _optimizer([p for p in policy.parameters() if p.requires_grad], config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    engine = None
    if config.deepspeed is not None:
        from smpo_pipeline.training.engine import deepspeed_engine

        engine, optimizer, schedule = deepspeed_engine(policy, optimizer, schedule, _deepspeed_config(config))
        if config.precision != "fp32" and not config.lora_rank:
            reference = reference.to(engine.module.dtype)  # frozen: no master weights needed
    autocast = (torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
                if config.precision == "bf16" and engine is None else contextlib.nullcontext())
    scheduler = inverse_scheduler(NOISE_SCHEDULE, inversion.num_steps)
    trained = engine or policy
    buffer = ReplayBuffer(config.dro.buffer_size)
    sampler_net = None  # DRO with M > 1: the policy as of its last refresh
    first = 0
    if config.checkpoint_dir and (found := checkpoints.latest(config.checkpoint_dir)) is not None:
        first, extra, shared = checkpoints.restore(found, policy, optimizer, schedule, engine, generator, rng,
                                                   rank=rank, world_size=world_size)
        buffer.load_state_dict(extra)
        if shared:
            sampler_net = copy.deepcopy(base_unet).eval().requires_grad_(False)
            sampler_net.load_state_dict(shared)

    def pair_loss():
        batch = data.batch(rng.choice(len(data), config.batch_size, replace=len(data) < config.batch_size),
                           generator if config.latents == "sample" else None)
        drop = torch.rand(len(batch), generator=generator) < config.caption_dropout
        batch.prompt_embeds, batch.pooled = drop_captions(batch.prompt_embeds, batch.pooled, drop)
        timesteps = torch.randint(*config.timestep_range, (len(batch),), generator=generator)
        return preference_loss(trained, reference, batch, timesteps, config.objective, config.beta, config.gamma,
                               config.inversion, alphas_cumprod, generator, scheduler, inversion,
                               config.min_snr_gamma)

    def dro_loss():
        x_t, timesteps, targets, rows = buffer.draw(config.batch_size, rng)
        latents, (embeds, pooled, time_ids) = experts.experts(rows.tolist(), generator if config.latents == "sample" else None)
        drop = torch.rand(len(rows), generator=generator) < config.caption_dropout
        embeds, pooled = drop_captions(embeds, pooled, drop)
        return dro_batch_loss(trained, reference, DROBatch(latents, embeds, pooled, time_ids, x_t, timesteps, targets),
                              config.dro.margin, alphas_cumprod, generator, config.min_snr_gamma)

    def refill_buffer(step: int) -> None:
        """DRO's online half: sample the current policy (M = 1) or its copy of ≤ M steps ago."""
        nonlocal sampler_net
        if config.dro.refresh_every > 1 and step % config.dro.refresh_every == 0:
            sampler_net = copy.deepcopy(base_unet).eval().requires_grad_(False)
            sampler_net.load_state_dict(_full_state(merged_unet(policy) if config.lora_rank else policy, engine))
        net = sampler_net if sampler_net is not None else policy
        rows = rng.choice(len(experts), config.batch_size, replace=len(experts) < config.batch_size)
        embeds, pooled, time_ids = experts.conditioning(experts.pairs.caption.iloc[rows])
        was_training = policy.training
        policy.eval()
        with autocast:
            x_t, timesteps, eps = sample_policy_states(net, {"prompt_embeds": embeds, "pooled": pooled,
                                                             "time_ids": time_ids}, experts.latent_shape,
                                                       NOISE_SCHEDULE, config.dro.sampler, generator)
        policy.train(was_training)
        buffer.add(x_t.float(), timesteps, eps.float(), rows)

    bar = tqdm(range(first, config.steps), initial=first, total=config.steps, desc=f"train {config.objective}",
               unit="step", mininterval=2, disable=rank != 0)
    for step in bar:
        start, cpu_start = time.perf_counter(), time.process_time()
        if config.objective == "dro":
            refill_buffer(step)
        sums = {}  # loss and metrics summed over the micro-batches: the record is their mean
        for _ in range(config.gradient_accumulation):
            with autocast:
                loss, metrics = dro_loss() if config.objective == "dro" else pair_loss()
            for name, value in {"loss": loss, **metrics}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            if engine is None:
                (loss / config.gradient_accumulation).backward()
            else:  # the engine scales by the accumulation and steps at the boundary
                engine.backward(loss)
                engine.step()
        if engine is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip).item()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        else:  # clipping, the optimizer and the LR schedule are the engine's
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
        means = {name: (total / config.gradient_accumulation).item() for name, total in sums.items()}
        record = {"loss": means.pop("loss"), "grad_norm": grad_norm, "lr": schedule.get_last_lr()[0],
                  "step_time": time.perf_counter() - start, "cpu_time": time.process_time() - cpu_start} | means
        done = step + 1
        if evaluate and config.evaluate_every and (done % config.evaluate_every == 0 or done == config.steps):
            was_training = policy.training
            policy.eval()
            with torch.no_grad(), _whole_weights(policy, engine):
                record |= evaluate(policy)
            policy.train(was_training)
        if log:
            log(step, record)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['implicit_accuracy']:.2f}")
        if config.checkpoint_dir and (done % config.checkpoint_every == 0 or done == config.steps):
            shared = ({k: v.contiguous() for k, v in sampler_net.state_dict().items()}
                      if sampler_net is not None else None)
            checkpoints.save(config.checkpoint_dir, done, policy, optimizer, schedule, engine, generator, rng,
                             config.keep_last, rank=rank, world_size=world_size, extra=buffer.state_dict(),
                             shared=shared)
    # The result goes into a fresh module: under ZeRO-3 the policy's own tensors are empty shards.
    state = {k: v.float() for k, v in _full_state(policy, engine).items()}
    result = copy.deepcopy(base_unet).float()
    if config.lora_rank:
        result = add_lora(result, config.lora_rank, config.lora_alpha)
        result.load_state_dict(state)
        return merged_unet(result).eval()
    result.load_state_dict(state)
    return result.eval()
