"""ReNoise inversion along a DDIM inverse grid, and SmPO's forward-noise target.

SmPO's second idea (``docs/objectives.md``): instead of random forward noise, the
noisy latent the model trains on comes from inverting the image along the model's own trajectory.
As the official code does it (``JaydenLyh/SmPO`` ``train.py``):

- the grid is ``DDIMInverseScheduler.set_timesteps(K)`` with SDXL's "leading" spacing and
  ``steps_offset=1``: g = 1, 101, …, 901 for K = 10 (SD1.5: K = 5, g = 1, 201, …, 801). The step at
  grid point g moves the latent from noise level g − 1000/K to level g (the first step starts from
  the clean latent x0, level "−99", whose ᾱ is ᾱ[0]); the UNet is evaluated at g;
- a ReNoise step with R renoise iterations: ε₀ = ε(z, g), z'₀ = step(ε₀, z); then for r = 1..R:
  ε_r = ε(z'_{r−1}, g), z'_r = step(ε_r, z); finally z ← step(mean(ε₀..ε_R), z). R = 1 is SmPO's
  "average two predictions" (2 UNet passes per step); larger R follows the ReNoise paper (R + 1
  passes); guidance 1 conditions on the prompt only (SmPO), > 1 adds classifier-free guidance with
  zeroed unconditional embeddings (what ``force_zeros_for_empty_prompt`` feeds SDXL);
- **which grid point a training timestep t uses**: the official code runs every grid step with
  g < t, starting from x0, so the latent used is the one reached at g* = max{g : g < t} (noise
  level g* ≤ t), or x0 itself when no g < t (t ≤ 1). ``trajectory_index(t)`` = #{g < t};
- the latent x̃ reached there is fed to the UNet at t, and the target is
  τ = (x̃ − √ᾱ_t · x0) / √(1 − ᾱ_t)   (``smpo_target``).

A trajectory is the stack [x0, z_g1, …, z_gK] (K + 1 latents): everything SmPO needs for any t, so
it can be computed once (with the reference UNet) and cached, instead of up to 2K UNet passes per
pair per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)  # built by name only
class InversionConfig:
    num_steps: int = 10  # K: SDXL 10, SD1.5 5
    renoise_iterations: int = 1  # R: 1 = SmPO
    guidance_scale: float = 1.0  # 1 = prompt only (SmPO)

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.renoise_iterations < 0 or self.guidance_scale < 1:
            raise ValueError(f"invalid inversion settings {self}")

    @classmethod
    def of(cls, settings) -> InversionConfig:
        """From any object with these three fields by name (the ``cache.inversion`` parameters)."""
        return cls(num_steps=settings.num_steps, renoise_iterations=settings.renoise_iterations,
                   guidance_scale=settings.guidance_scale)


def inverse_scheduler(noise_schedule: dict, num_steps: int):
    """SDXL's DDIM inverse scheduler ("leading", offset 1, ᾱ of the "−99" start = ᾱ[0])."""
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler(
        **noise_schedule, timestep_spacing="leading", steps_offset=1, clip_sample=False, set_alpha_to_one=False,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def unet_dtype(unet) -> torch.dtype:
    """The UNet's parameter dtype (bf16/fp16 under DeepSpeed's mixed precision; an engine's module's)."""
    return getattr(getattr(unet, "module", unet), "dtype", torch.float32)


def predict_noise(unet, z, timesteps, cond: dict, guidance_scale: float = 1.0):
    """The UNet's prediction at (z, t | cond) for ``timesteps`` (one int for the batch, or one per
    row): ε, or v for a v-prediction model, whose schedulers (built from the same schedule) convert
    it when they step; a ReNoise step then averages v's. ``cond`` holds
    ``prompt_embeds``, ``pooled`` and ``time_ids``. Guidance 1 is the conditional prediction alone;
    above 1, classifier-free guidance with zeroed unconditional embeddings (what
    ``force_zeros_for_empty_prompt`` feeds SDXL). Inputs are cast to the UNet's dtype."""
    dtype = unet_dtype(unet)
    z, cond = z.to(dtype), {k: v.to(dtype) for k, v in cond.items()}
    if isinstance(timesteps, int):
        timesteps = torch.full((z.shape[0],), timesteps, dtype=torch.long, device=z.device)
    if guidance_scale == 1.0:
        return unet(z, timesteps, encoder_hidden_states=cond["prompt_embeds"],
                    added_cond_kwargs={"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}).sample
    embeds = torch.cat([torch.zeros_like(cond["prompt_embeds"]), cond["prompt_embeds"]])
    pooled = torch.cat([torch.zeros_like(cond["pooled"]), cond["pooled"]])
    uncond, text = unet(torch.cat([z, z]), timesteps.repeat(2), encoder_hidden_states=embeds,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": cond["time_ids"].repeat(2, 1)}).sample.chunk(2)
    return uncond + guidance_scale * (text - uncond)


@torch.no_grad()
def renoise_inversion(unet, x0, cond: dict, scheduler, config: InversionConfig, up_to: int | None = None):
    """The trajectory [x0, z_g1, …] of ``x0`` (a batch of scaled latents), [K + 1, B, C, H, W].

    ``cond``: ``prompt_embeds``, ``pooled``, ``time_ids`` for the batch. ``up_to``: run only the
    grid steps with g < up_to (the official code's per-step work for training timestep ``up_to``).
    """
    z = x0
    trajectory = [x0]
    for g in scheduler.timesteps.tolist():
        if up_to is not None and g >= up_to:
            break
        predictions = [predict_noise(unet, z, g, cond, config.guidance_scale)]
        renoised = scheduler.step(predictions[0], g, z).prev_sample
        for _ in range(config.renoise_iterations):
            predictions.append(predict_noise(unet, renoised, g, cond, config.guidance_scale))
            renoised = scheduler.step(predictions[-1], g, z).prev_sample
        z = scheduler.step(torch.stack(predictions).mean(dim=0), g, z).prev_sample
        trajectory.append(z)
    return torch.stack(trajectory)


def trajectory_index(timesteps, grid) -> torch.Tensor:
    """Per training timestep t: how many grid points lie below t (0 = x0 itself)."""
    grid = torch.as_tensor(grid, device=torch.as_tensor(timesteps).device)
    return (grid[None, :] < torch.as_tensor(timesteps)[:, None]).sum(dim=1)


def smpo_target(trajectories, x0, timesteps, grid, alphas_cumprod):
    """(x̃, τ) for a batch: the reached latent at each sample's grid point and SmPO's target
    τ = (x̃ − √ᾱ_t·x0)/√(1 − ᾱ_t). ``trajectories``: [B, K + 1, C, H, W]."""
    idx = trajectory_index(timesteps, grid)
    reached = trajectories[torch.arange(trajectories.shape[0]), idx]
    a = alphas_cumprod.to(x0.device)[timesteps].view(-1, 1, 1, 1).to(x0.dtype)
    return reached, (reached - a.sqrt() * x0) / (1 - a).sqrt()


@torch.no_grad()
def ddim_reconstruct(unet, z, cond: dict, noise_schedule: dict, num_steps: int, guidance_scale: float = 1.0):
    """Run the DDIM sampler on the same grid from the fully inverted latent back to x0 — the
    inversion sanity check (exact inversion would give back x0)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**noise_schedule, timestep_spacing="leading", steps_offset=1, clip_sample=False,
                              set_alpha_to_one=False)
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps.tolist():
        z = scheduler.step(predict_noise(unet, z, t, cond, guidance_scale), t, z).prev_sample
    return z
