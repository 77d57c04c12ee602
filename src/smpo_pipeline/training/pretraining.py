"""Training the tiny base model from scratch: first the VAE, then the UNet with both text encoders.

Settings and pitfalls: ``docs/embedded_world.md``. Both loops are plain
PyTorch, seeded, and short enough to read in one go.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from smpo_pipeline.training.schedules import warmup_then_cosine
from smpo_pipeline.world.render import render


def render_batch(prompts: Sequence[str], resolution: int, rng: np.random.Generator):
    """Jittered ideal renders of ``prompts`` as a float tensor in [-1, 1], [B, 3, H, W]."""
    from smpo_pipeline.models.sampling import to_pixels

    return to_pixels([render(p, resolution, rng=rng) for p in prompts])


@dataclass
class VAEResult:
    vae: object
    metrics: dict


def train_vae(
    vae,
    prompts: Sequence[str],
    resolution: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    kl_weight: float,
    seed: int,
    cosine_decay: bool = False,
    held_out: int = 256,
) -> VAEResult:
    """MSE + ``kl_weight``·KL on fresh jittered renders; then set ``scaling_factor`` to 1/std of
    the latents (pitfall 4: SD's 0.18215 belongs to SD's VAE, not ours). With ``cosine_decay`` the
    LR is annealed to 0: the reconstruction keeps sharpening at the end instead of jittering around
    its optimum, which is what the round trip's fidelity (docs/regime.md) depends on. PSNR and the
    scaling factor are measured on ``held_out`` fresh renders."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)) if cosine_decay else 1.0)
    vae.train()
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="VAE", unit="step", mininterval=2):
        images = render_batch(rng.choice(prompts, batch_size), resolution, rng)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, images) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start

    vae.eval()
    with torch.no_grad():
        renders = render_batch(rng.choice(prompts, held_out), resolution, np.random.default_rng(seed + 1))
        posterior = vae.encode(renders).latent_dist
        mse = torch.nn.functional.mse_loss(vae.decode(posterior.mode()).sample.clamp(-1, 1), renders)
        scaling = 1.0 / posterior.sample().std().item()
    vae.register_to_config(scaling_factor=scaling)
    psnr = 10 * math.log10(4.0 / mse.item())  # pixel range [-1, 1] has peak-to-peak 2
    return VAEResult(vae, {"steps": steps, "seconds": round(seconds, 1), "psnr_db": round(psnr, 2),
                           "scaling_factor": round(scaling, 4)})


@dataclass
class BaseModelResult:
    unet: object
    text_encoders: tuple
    metrics: dict


@dataclass(frozen=True, kw_only=True)  # built by name only
class PretrainConfig:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    grad_clip: float
    ema_decay: float
    caption_dropout: float
    offset_noise: float  # a per-channel constant shift of the noise lets the model change overall colour
    renders_per_prompt: int
    seed: int
    min_snr_gamma: float | None = None
    cosine_decay: bool = False  # anneal the LR to 0 after warm-up: fine-tuning starts from a converged model
    checkpoint_every: int = 0  # call on_checkpoint(step, EMA) every N steps (0: never)
    noise_schedule: dict | None = None  # models.tiny_sdxl.make_noise_schedule(...); None: SDXL's (ε-prediction)


def _encoded_renders(vae, rendered: np.ndarray, resolution: int, rng: np.random.Generator):
    """Posterior (mean, std) of one jittered render per entry of ``rendered``, encoded once (pitfall 5)."""
    import torch

    with torch.no_grad():
        means, stds = [], []
        for chunk in np.array_split(rendered, max(1, len(rendered) // 512)):
            dist = vae.encode(render_batch(chunk, resolution, rng)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _denoising_loss(trained, tokenizer, latents, captions: list[str], noise_scheduler, config: PretrainConfig,
                    add_time_ids):
    """The denoising MSE of a batch against the schedule's target (ε or v), Min-SNR-γ weighted when
    set (``training.step.timestep_weights``), captions dropped at random."""
    import torch

    from smpo_pipeline.models.conditioning import drop_captions, encode_prompts
    from smpo_pipeline.training.step import prediction_target, timestep_weights

    n = latents.shape[0]
    noise = torch.randn_like(latents) + config.offset_noise * torch.randn(n, latents.shape[1], 1, 1)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (n,))
    embeds, pooled = encode_prompts((tokenizer, tokenizer), (trained["te1"], trained["te2"]), captions)
    embeds, pooled = drop_captions(embeds, pooled, torch.rand(n) < config.caption_dropout)
    pred = trained["unet"](noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=embeds,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": add_time_ids}).sample
    prediction_type = noise_scheduler.config.prediction_type
    target = prediction_target(latents, noise, t, noise_scheduler.alphas_cumprod, prediction_type)
    loss = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    # Min-SNR-γ keeps the many easy low-noise steps from dominating; it converges markedly faster.
    weight = timestep_weights(t, noise_scheduler.alphas_cumprod, config.min_snr_gamma, prediction_type)
    return (loss if weight is None else loss * weight).mean()


def train_unet_and_text_encoders(vae, unet, text_encoders: Sequence, tokenizer, prompts: Sequence[str],
                                 resolution: int, config: PretrainConfig, captions: Sequence[str] | None = None,
                                 on_checkpoint: Callable[[int, object], None] | None = None) -> BaseModelResult:
    """Denoising training (ε- or v-prediction, ``config.noise_schedule``) of the UNet and both text
    encoders, returning EMA weights.

    Images are rendered and VAE-encoded once; each step samples from the stored posteriors.
    Conditioning is ``models.conditioning``'s copy of the pipeline's (pitfalls 2, 3). ``captions``
    (one per render: ``len(prompts) * renders_per_prompt``, in the order of
    ``np.repeat(prompts, renders_per_prompt)``) is what the text encoders read, e.g. web-like
    captions with mistakes (``world.captions``); by default each render's own prompt.
    """
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from smpo_pipeline.models.conditioning import time_ids
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler

    c = config
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    rendered = np.repeat(np.asarray(prompts, dtype=object), c.renders_per_prompt)
    captions = rendered if captions is None else np.asarray(captions, dtype=object)
    if len(captions) != len(rendered):
        raise ValueError(f"{len(captions)} captions for {len(rendered)} renders ({len(prompts)} prompts × {c.renders_per_prompt})")
    latent_mean, latent_std = _encoded_renders(vae, rendered, resolution, rng)
    noise_scheduler = build_training_scheduler(c.noise_schedule)
    trained = torch.nn.ModuleDict({"unet": unet, "te1": text_encoders[0], "te2": text_encoders[1]}).train()
    ema = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(c.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=c.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine(c.warmup_steps, c.steps, c.cosine_decay))
    add_time_ids = time_ids(resolution, c.batch_size)

    losses, start = [], time.perf_counter()
    progress = tqdm(range(c.steps), desc="UNet + text encoders", unit="step", mininterval=2)
    for step in progress:
        idx = torch.from_numpy(rng.integers(0, len(captions), c.batch_size))
        latents = (latent_mean[idx] + latent_std[idx] * torch.randn_like(latent_mean[idx])) * vae.config.scaling_factor
        loss = _denoising_loss(trained, tokenizer, latents, list(captions[idx]), noise_scheduler, c, add_time_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), c.grad_clip)
        optimizer.step()
        schedule.step()
        ema.update_parameters(trained)
        losses.append(loss.item())
        if on_checkpoint and c.checkpoint_every and (step + 1) % c.checkpoint_every == 0:
            on_checkpoint(step + 1, ema.module.eval())
        if (step + 1) % 20 == 0:
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")

    final = ema.module.eval()
    return BaseModelResult(final["unet"], (final["te1"], final["te2"]),
                           {"steps": c.steps, "seconds": round(time.perf_counter() - start, 1),
                            "final_loss": round(float(np.mean(losses[-50:])), 4), "training_images": len(captions)})
