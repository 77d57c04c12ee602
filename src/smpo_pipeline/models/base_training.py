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

from smpo_pipeline.world.render import render


def render_batch(prompts: Sequence[str], resolution: int, rng: np.random.Generator):
    """Jittered ideal renders of ``prompts`` as a float tensor in [-1, 1], [B, 3, H, W]."""
    import torch

    pixels = np.stack([np.asarray(render(p, resolution, rng=rng)) for p in prompts])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


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
) -> VAEResult:
    """MSE + ``kl_weight``·KL on fresh jittered renders; then set ``scaling_factor`` to 1/std of
    the latents (pitfall 4: SD's 0.18215 belongs to SD's VAE, not ours). With ``cosine_decay`` the
    LR is annealed to 0: the reconstruction keeps sharpening at the end instead of jittering around
    its optimum, which is what the round trip's fidelity (docs/regime.md) depends on."""
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
        held_out = render_batch(rng.choice(prompts, 256), resolution, np.random.default_rng(seed + 1))
        posterior = vae.encode(held_out).latent_dist
        mse = torch.nn.functional.mse_loss(vae.decode(posterior.mode()).sample.clamp(-1, 1), held_out)
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


def train_unet_and_text_encoders(
    vae,
    unet,
    text_encoders: Sequence,
    tokenizer,
    prompts: Sequence[str],
    resolution: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    grad_clip: float,
    ema_decay: float,
    caption_dropout: float,
    offset_noise: float,
    renders_per_prompt: int,
    seed: int,
    min_snr_gamma: float | None = None,
    captions: Sequence[str] | None = None,
    cosine_decay: bool = False,
    on_checkpoint: Callable[[int, object], None] | None = None,
    checkpoint_every: int = 0,
) -> BaseModelResult:
    """Epsilon-prediction training of the UNet and both text encoders, returning EMA weights.

    Images are rendered and VAE-encoded once (pitfall 5); each step samples from the stored
    posteriors. Conditioning is ``models.conditioning``'s copy of the pipeline's (pitfalls 2, 3).
    ``captions`` (one per render: ``len(prompts) * renders_per_prompt``, in the order of
    ``np.repeat(prompts, renders_per_prompt)``) is what the text encoders read, e.g. web-like
    captions with mistakes (``world.captions``); by default each render's own prompt.
    ``cosine_decay`` anneals the learning rate to zero after warm-up, so the raw weights settle
    where the EMA is (fine-tuning then starts from a converged model, not a noisy average).
    """
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from smpo_pipeline.models.conditioning import drop_captions, encode_prompts, time_ids
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rendered = np.repeat(np.asarray(prompts, dtype=object), renders_per_prompt)
    captions = rendered if captions is None else np.asarray(captions, dtype=object)
    if len(captions) != len(rendered):
        raise ValueError(f"{len(captions)} captions for {len(rendered)} renders ({len(prompts)} prompts × {renders_per_prompt})")
    with torch.no_grad():
        means, stds = [], []
        for chunk in np.array_split(rendered, max(1, len(rendered) // 512)):
            dist = vae.encode(render_batch(chunk, resolution, rng)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        latent_mean, latent_std = torch.cat(means), torch.cat(stds)
    scaling = vae.config.scaling_factor

    noise_scheduler = build_training_scheduler()
    alphas_cumprod = noise_scheduler.alphas_cumprod
    trained = torch.nn.ModuleDict({"unet": unet, "te1": text_encoders[0], "te2": text_encoders[1]})
    trained.train()
    ema = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=learning_rate)
    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine_decay:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    add_time_ids = time_ids(resolution, batch_size)

    losses, start = [], time.perf_counter()
    progress = tqdm(range(steps), desc="UNet + text encoders", unit="step", mininterval=2)
    for _ in progress:
        idx = torch.from_numpy(rng.integers(0, len(captions), batch_size))
        latents = (latent_mean[idx] + latent_std[idx] * torch.randn_like(latent_mean[idx])) * scaling
        # Offset noise: a per-channel constant shift lets the model change overall colour.
        noise = torch.randn_like(latents) + offset_noise * torch.randn(batch_size, latents.shape[1], 1, 1)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        noisy = noise_scheduler.add_noise(latents, noise, t)

        embeds, pooled = encode_prompts((tokenizer, tokenizer), (trained["te1"], trained["te2"]), list(captions[idx]))
        embeds, pooled = drop_captions(embeds, pooled, torch.rand(batch_size) < caption_dropout)
        pred = trained["unet"](
            noisy, t, encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": add_time_ids},
        ).sample
        loss = torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        if min_snr_gamma:
            # Min-SNR-γ weighting (Hang et al. 2023, eq. 9 for ε-prediction): min(SNR, γ)/SNR keeps
            # the many easy low-noise steps from dominating; it converges markedly faster.
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            loss = loss * torch.clamp(snr, max=min_snr_gamma) / snr
        loss = loss.mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        ema.update_parameters(trained)
        losses.append(loss.item())
        if on_checkpoint and checkpoint_every and len(losses) % checkpoint_every == 0:
            on_checkpoint(len(losses), ema.module.eval())
        if len(losses) % 20 == 0:
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")

    final = ema.module.eval()
    tail = losses[-min(50, len(losses)):]
    return BaseModelResult(
        final["unet"],
        (final["te1"], final["te2"]),
        {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
         "final_loss": round(float(np.mean(tail)), 4), "training_images": len(captions)},
    )
