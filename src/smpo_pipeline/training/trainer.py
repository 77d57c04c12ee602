"""The preference-training loop (DPO / SmPO) over the training cache — small enough to hold in
one's head: sample pairs, read their cached latents / embeddings / trajectories, one
``preference_loss`` step, clip, step, log.

Single process; plain PyTorch, or DeepSpeed ZeRO (stage 0–3 from a config) around the policy
when ``TrainConfig.deepspeed`` is given. With ``checkpoint_dir`` it checkpoints every
``checkpoint_every`` steps and resumes from the latest checkpoint, continuing the same loss curve.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from smpo_pipeline.inversion import InversionConfig, inverse_scheduler
from smpo_pipeline.models.conditioning import drop_captions
from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
from smpo_pipeline.training import checkpoints
from smpo_pipeline.training.step import PairBatch, preference_loss
from smpo_pipeline.training_cache import CacheReader, Fingerprints, rank_and_world


@dataclass(frozen=True)
class TrainConfig:
    objective: str  # dpo | smpo
    beta: float
    gamma: float
    inversion: str  # cached | online | none
    steps: int
    batch_size: int  # pairs per step
    learning_rate: float
    warmup_steps: int
    grad_clip: float
    caption_dropout: float
    seed: int
    deepspeed: dict | None = None  # a DeepSpeed config (ZeRO stage, clipping, ...); None: plain torch
    checkpoint_dir: str | None = None  # resume from its latest checkpoint, save every checkpoint_every
    checkpoint_every: int = 50
    keep_last: int = 2


class CachedPairs:
    """Training pairs whose tensors come from the cache (``PairBatch`` per list of rows)."""

    def __init__(self, pairs, reader: CacheReader, prints: Fingerprints, with_trajectories: bool) -> None:
        self.pairs = pairs.reset_index(drop=True)
        self.reader, self.prints, self.with_trajectories = reader, prints, with_trajectories

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, rows) -> PairBatch:
        r, p = self.reader, self.prints
        sel = self.pairs.iloc[list(rows)]
        latents_w = torch.stack([r.get(p.latent_key(u), "latent").float() for u in sel.image_w_uid])
        latents_l = torch.stack([r.get(p.latent_key(u), "latent").float() for u in sel.image_l_uid])
        text = [p.text_key(c) for c in sel.caption]
        batch = PairBatch(
            latents_w, latents_l,
            torch.stack([r.get(k, "prompt_embeds").float() for k in text]),
            torch.stack([r.get(k, "pooled").float() for k in text]),
            torch.stack([r.get(k, "time_ids").float() for k in text]),
            torch.tensor(sel.p.to_numpy(), dtype=torch.float32),
        )
        if self.with_trajectories:
            batch.trajectory_w = torch.stack([r.get(p.trajectory_key(u, c), "trajectory").float()
                                              for u, c in zip(sel.image_w_uid, sel.caption, strict=True)])
            batch.trajectory_l = torch.stack([r.get(p.trajectory_key(u, c), "trajectory").float()
                                              for u, c in zip(sel.image_l_uid, sel.caption, strict=True)])
        return batch


def train_preference(base_unet, data: CachedPairs, config: TrainConfig, inversion: InversionConfig,
                     alphas_cumprod, log: Callable[[int, dict], None] | None = None):
    """Fine-tune a copy of ``base_unet`` (the frozen reference) on ``data``; returns the policy."""
    rank, world_size = rank_and_world()
    if world_size > 1 and config.checkpoint_dir:
        raise ValueError("checkpoints are single-process for now: set no checkpoint_dir with several processes")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + rank)  # each rank draws its own batches
    generator = torch.Generator().manual_seed(config.seed + rank)
    reference = base_unet.eval().requires_grad_(False)
    policy = copy.deepcopy(base_unet).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    engine = None
    if config.deepspeed is not None:
        from smpo_pipeline.training.engine import deepspeed_engine

        ds_config = config.deepspeed | {"train_micro_batch_size_per_gpu": config.batch_size,
                                        "gradient_clipping": config.grad_clip}
        engine, optimizer, schedule = deepspeed_engine(policy, optimizer, schedule, ds_config)
    scheduler = inverse_scheduler(NOISE_SCHEDULE, inversion.num_steps)
    first = 0
    if config.checkpoint_dir and (found := checkpoints.latest(config.checkpoint_dir)) is not None:
        first = checkpoints.restore(found, policy, optimizer, schedule, engine, generator, rng)
    bar = tqdm(range(first, config.steps), initial=first, total=config.steps, desc=f"train {config.objective} ({config.inversion})", unit="step", mininterval=2)
    for step in bar:
        start = time.perf_counter()
        batch = data.batch(rng.choice(len(data), config.batch_size, replace=len(data) < config.batch_size))
        drop = torch.rand(len(batch), generator=generator) < config.caption_dropout
        batch.prompt_embeds, batch.pooled = drop_captions(batch.prompt_embeds, batch.pooled, drop)
        timesteps = torch.randint(0, 1000, (len(batch),), generator=generator)
        loss, metrics = preference_loss(engine or policy, reference, batch, timesteps, config.objective, config.beta,
                                        config.gamma, config.inversion, alphas_cumprod, generator, scheduler, inversion)
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip).item()
            optimizer.step()
            schedule.step()
        else:  # clipping, the optimizer and the LR schedule are the engine's
            engine.backward(loss)
            engine.step()
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
        record = {"loss": loss.item(), "grad_norm": grad_norm, "lr": schedule.get_last_lr()[0],
                  "step_time": time.perf_counter() - start} | {k: v.item() for k, v in metrics.items()}
        if log:
            log(step, record)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['implicit_accuracy']:.2f}")
        done = step + 1
        if config.checkpoint_dir and (done % config.checkpoint_every == 0 or done == config.steps):
            checkpoints.save(config.checkpoint_dir, done, policy, optimizer, schedule, engine, generator, rng,
                             config.keep_last)
    if engine is not None and engine.zero_optimization_stage() == 3:
        # ZeRO-3 partitions the parameters: gather them back into a plain module.
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        policy = copy.deepcopy(base_unet)
        policy.load_state_dict(state)
    return policy.eval()
