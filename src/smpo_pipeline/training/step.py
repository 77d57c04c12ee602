"""One training step's loss, from cached latents and conditioning: a batch of preference pairs
(DPO, SmPO) or a batch of expert images with policy states (DRO).

The forward noise of a pair (same timestep and, for random noise, the same noise for both images,
as every official implementation does) comes from one of three sources, ``forward_noise``:

- ``none``   — Diffusion-DPO: x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε with fresh ε, target ε;
- ``cached`` — SmPO with the ReNoise trajectory cached from the reference UNet: (x̃, τ) from
  ``inversion.smpo_target`` — no UNet pass beyond the training ones;
- ``online`` — SmPO exactly as the official code: the trajectory is recomputed with the current
  policy UNet (no grad) for every pair at every step. With per-pair timesteps, the grid is run up
  to the batch's largest t and each pair takes its own point (the official code shares one t per
  batch).

The target is in the base model's own parametrisation (its scheduler's ``prediction_type``): ε, or
v = √ᾱ_t ε − √(1−ᾱ_t) x0 of the same (x0, ε) pair, SmPO's τ taking ε's place (``prediction_target``).

Inputs are cast to the UNet's parameter dtype (bf16/fp16 under DeepSpeed's mixed precision); the
MSE is always computed in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smpo_pipeline.inversion import InversionConfig, predict_noise, renoise_inversion, smpo_target
from smpo_pipeline.objectives import dpo_loss, dro_loss, sft_loss, smpo_loss


@dataclass
class PairBatch:
    latents_w: torch.Tensor  # [B, C, H, W], scaled VAE latents
    latents_l: torch.Tensor
    prompt_embeds: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, P]
    time_ids: torch.Tensor  # [B, 6]
    prob: torch.Tensor  # [B], SmPO's smoothed preference probability of the pair
    trajectory_w: torch.Tensor | None = None  # [B, K + 1, C, H, W]
    trajectory_l: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents_w.shape[0]


@dataclass
class DROBatch:
    """Diffusion-DRO's two halves, sharing prompt and timestep row by row."""

    expert_latents: torch.Tensor  # [B, C, H, W], clean latents of expert images
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    policy_x_t: torch.Tensor  # [B, C, H, W], states of the policy's own sampling trajectories
    timesteps: torch.Tensor  # [B], the states' timesteps (the expert half is noised to the same t)
    policy_targets: torch.Tensor  # [B, C, H, W], the sampling network's prediction (ε or v) at those states

    def __len__(self) -> int:
        return self.expert_latents.shape[0]


def timestep_weights(timesteps, alphas_cumprod, min_snr_gamma: float | None,
                     prediction_type: str = "epsilon") -> torch.Tensor | None:
    """Min-SNR-γ weights, or None for the plain MSE the official preference code uses. A base
    pretrained with this weighting (the embedded one is) learned little at low noise; the plain
    MSE's gradient is dominated by those timesteps, so fine-tuning with it spends the update there
    (docs/regime.md).

    Min-SNR-γ (Hang et al. 2023, eq. 9) weights the x0-error by min(SNR_t, γ). An ε-error is SNR_t
    times the x0-error, hence min(SNR, γ)/SNR. A v-error is (SNR_t + 1) times it; Hang et al.'s rule
    would give min(SNR, γ)/(SNR + 1), which is 0 at zero terminal SNR. This uses min(SNR + 1, γ)/(SNR + 1)
    instead (the x0-error weighted by min(SNR + 1, γ), as diffusers' first Min-SNR script had it), a
    deliberate variant: the pure-noise step, where the words alone must place the layout, keeps weight 1."""
    if min_snr_gamma is None:
        return None
    a = alphas_cumprod.to(timesteps.device)[timesteps]
    snr = a / (1 - a)
    if prediction_type == "v_prediction":
        return torch.clamp(snr + 1, max=min_snr_gamma) / (snr + 1)
    if prediction_type == "epsilon":
        if bool((snr == 0).any()):
            raise ValueError("ε-prediction on a schedule that reaches zero SNR: the ε target is undefined at "
                             "t where ᾱ_t = 0; use prediction_type v_prediction")
        return torch.clamp(snr, max=min_snr_gamma) / snr
    raise ValueError(f"unknown prediction_type {prediction_type!r}: epsilon or v_prediction")


def per_sample_mse(unet, x_t, timesteps, target, embeds, pooled, time_ids, guidance: float = 1.0) -> torch.Tensor:
    """Each row's squared error of the UNet's prediction, or with ``guidance`` w > 1 of the
    classifier-free-guided one u + w(c − u) the sampler steps with (``inversion.predict_noise``:
    both branches in one batch, the gradient reaching both)."""
    pred = predict_noise(unet, x_t, timesteps, {"prompt_embeds": embeds, "pooled": pooled, "time_ids": time_ids},
                         guidance)
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


def draw_timesteps(n: int, timestep_range: tuple[int, int], sampling: str = "uniform", generator=None):
    """n training timesteps from [low, high): independent uniform draws (every official
    implementation), or ``stratified``: one uniform draw in each of n equal strata of the range, in a
    random order, so that a batch covers the range evenly and its mean gradient varies less from
    batch to batch (the same marginal law per row; measured with benchmarks/gradient_snr.py)."""
    low, high = timestep_range
    if sampling == "uniform":
        return torch.randint(low, high, (n,), generator=generator)
    if sampling == "stratified":
        u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
        t = (low + u * (high - low)).floor().long().clamp(low, high - 1)
        return t[torch.randperm(n, generator=generator)]
    raise ValueError(f"unknown timestep sampling {sampling!r}: uniform or stratified")


def add_noise(x0, noise, timesteps, alphas_cumprod):
    """The forward process q(x_t | x0) = √ᾱ_t x0 + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4)."""
    a = alphas_cumprod.to(x0.device)[timesteps].view(-1, 1, 1, 1).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def prediction_target(x0, noise, timesteps, alphas_cumprod, prediction_type: str):
    """What the UNet predicts at x_t = add_noise(x0, noise, t): ε itself, or the velocity
    v = √ᾱ_t ε − √(1−ᾱ_t) x0 (Salimans & Ho 2022, §4; diffusers' ``get_velocity``). Every objective's
    squared error is taken against this, so a v-prediction base is fine-tuned in its own parametrisation."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = alphas_cumprod.to(x0.device)[timesteps].view(-1, 1, 1, 1).to(x0.dtype)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}: epsilon or v_prediction")


def _policy_and_reference_mse(policy, reference, x_t, timesteps, target, cond, alphas_cumprod,
                              min_snr_gamma: float | None, prediction_type: str = "epsilon", guidance: float = 1.0):
    """Per-sample (Min-SNR-weighted) MSE of the policy and, without gradients, of the reference,
    each split into its two halves (winners | losers, or experts | policy states), of their
    predictions guided at ``guidance``."""
    weight = timestep_weights(timesteps, alphas_cumprod, min_snr_gamma, prediction_type)
    model = per_sample_mse(policy, x_t, timesteps, target, *cond, guidance=guidance)
    with torch.no_grad():
        ref = per_sample_mse(reference, x_t, timesteps, target, *cond, guidance=guidance)
    if weight is not None:
        model, ref = model * weight, ref * weight
    return model.chunk(2), ref.chunk(2)


def noisy_inputs(batch: PairBatch, timesteps, forward_noise: str, alphas_cumprod, generator=None,
                 inverse_scheduler=None, policy=None, inversion: InversionConfig | None = None,
                 prediction_type: str = "epsilon"):
    """(x_t, target) for the 2B images [winners; losers] at their pair's timestep."""
    x0 = torch.cat([batch.latents_w, batch.latents_l])
    t2 = timesteps.repeat(2)
    if forward_noise == "none":
        noise = torch.randn(batch.latents_w.shape, generator=generator, dtype=x0.dtype).to(x0.device).repeat(2, 1, 1, 1)
        return add_noise(x0, noise, t2, alphas_cumprod), prediction_target(x0, noise, t2, alphas_cumprod, prediction_type)
    grid = inverse_scheduler.timesteps
    if forward_noise == "cached":
        trajectories = torch.cat([batch.trajectory_w, batch.trajectory_l])
    elif forward_noise == "online":
        cond = {"prompt_embeds": batch.prompt_embeds.repeat(2, 1, 1), "pooled": batch.pooled.repeat(2, 1),
                "time_ids": batch.time_ids.repeat(2, 1)}
        with torch.no_grad():
            trajectories = renoise_inversion(policy, x0, cond, inverse_scheduler, inversion, up_to=int(timesteps.max()))
        trajectories = trajectories.transpose(0, 1)  # [2B, k + 1, ...]
    else:
        raise ValueError(f"unknown forward_noise {forward_noise!r}: none, cached or online")
    reached, tau = smpo_target(trajectories, x0, t2, grid[: trajectories.shape[1] - 1], alphas_cumprod)
    return reached, prediction_target(x0, tau, t2, alphas_cumprod, prediction_type)


def preference_loss(policy, reference, batch: PairBatch, timesteps, objective: str, beta: float, gamma: float,
                    forward_noise: str, alphas_cumprod, generator=None, inverse_scheduler=None,
                    inversion: InversionConfig | None = None, min_snr_gamma: float | None = None,
                    prediction_type: str = "epsilon", guidance: float = 1.0):
    """The DPO or SmPO loss of a batch (or ``sft``: the preferred images' denoising loss alone, the
    sanity baseline of ``benchmarks/preference_regime.py``), and its metrics. ``reference`` runs
    without gradients. With ``guidance`` w > 1 both models' errors are those of the guided prediction
    (``per_sample_mse``): the pairs were drawn by the guided sampler, and an objective that fits
    the conditional branch alone to them has that sampler apply the guidance a second time
    (docs/regime.md, round 16); at the same learning rate the guided fit only moves further
    (round 17), so the default is 1."""
    x_t, target = noisy_inputs(batch, timesteps, forward_noise, alphas_cumprod, generator, inverse_scheduler, policy,
                               inversion, prediction_type)
    cond = (batch.prompt_embeds.repeat(2, 1, 1), batch.pooled.repeat(2, 1), batch.time_ids.repeat(2, 1))
    (model_w, model_l), (ref_w, ref_l) = _policy_and_reference_mse(policy, reference, x_t, timesteps.repeat(2), target,
                                                                   cond, alphas_cumprod, min_snr_gamma, prediction_type,
                                                                   guidance)
    if objective == "dpo":
        return dpo_loss(model_w, model_l, ref_w, ref_l, beta)
    if objective == "sft":  # the sanity baseline: fit the preferred images alone (metrics as DPO's)
        return sft_loss(model_w)[0], dpo_loss(model_w, model_l, ref_w, ref_l, beta)[1]
    if objective == "smpo":
        return smpo_loss(model_w, model_l, ref_w, ref_l, beta, batch.prob, gamma)
    raise ValueError(f"unknown objective {objective!r}")


def dro_batch_loss(policy, reference, batch: DROBatch, margin: float, alphas_cumprod, generator=None,
                   min_snr_gamma: float | None = None, prediction_type: str = "epsilon"):
    """Diffusion-DRO's hinge loss (``objectives.dro_loss``): expert images with fresh noise ε̄ at t,
    target ε̄ (or its v); policy states x_t with the sampling network's own prediction as target."""
    x0 = batch.expert_latents
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = torch.cat([add_noise(x0, noise, batch.timesteps, alphas_cumprod), batch.policy_x_t.to(x0)])
    target = torch.cat([prediction_target(x0, noise, batch.timesteps, alphas_cumprod, prediction_type),
                        batch.policy_targets.to(x0)])
    cond = (batch.prompt_embeds.repeat(2, 1, 1), batch.pooled.repeat(2, 1), batch.time_ids.repeat(2, 1))
    (model_expert, model_policy), (ref_expert, ref_policy) = _policy_and_reference_mse(
        policy, reference, x_t, batch.timesteps.repeat(2), target, cond, alphas_cumprod, min_snr_gamma, prediction_type)
    return dro_loss(model_expert, model_policy, ref_expert, ref_policy, margin)
