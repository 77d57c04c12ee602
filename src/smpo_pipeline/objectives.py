"""The preference objectives, as their authors' code computes them (pure torch).

Every function takes per-sample MSE tensors — ``mse_θ(x) = mean over C,H,W of (ε_θ(x_t, c, t) −
target)²`` for the trained UNet θ and the frozen reference — and returns ``(loss, metrics)``: the
mean loss as a 0-d tensor and a dict of 0-d tensors for logging. Formulas and constants:
``docs/objectives.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(model_mse: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Plain supervised fine-tuning: the mean denoising MSE."""
    loss = model_mse.mean()
    return loss, {"model_mse": loss.detach()}


def _dpo_inside(model_w, model_l, ref_w, ref_l, scale):
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    return -0.5 * scale * (model_diff - ref_diff), model_diff, ref_diff


def dpo_loss(model_w, model_l, ref_w, ref_l, beta: float) -> tuple[torch.Tensor, dict]:
    """Diffusion-DPO (Wallace et al. 2023; SalesforceAIResearch/DiffusionDPO train.py):
    inside = −½ β (model_diff − ref_diff), loss = mean(−log σ(inside)); β = 5000 official."""
    inside, model_diff, ref_diff = _dpo_inside(model_w, model_l, ref_w, ref_l, beta)
    loss = -F.logsigmoid(inside).mean()
    return loss, {
        "implicit_accuracy": (inside > 0).float().mean().detach(),
        "margin": (ref_diff - model_diff).mean().detach(),
        "model_mse": 0.5 * (model_w.mean() + model_l.mean()).detach(),
        "ref_mse": 0.5 * (ref_w.mean() + ref_l.mean()).detach(),
    }


def smpo_loss(model_w, model_l, ref_w, ref_l, beta: float, prob, gamma: float = 10.0) -> tuple[torch.Tensor, dict]:
    """SmPO-Diffusion (Lu et al., ICML 2025; JaydenLyh/SmPO train.py):
    inside = −½ β γ(2p − 1)(model_diff − ref_diff), loss = mean(−log σ(inside)); γ = 10 official.
    ``prob`` is the smoothed preference probability p of each pair (``smoothing``). With
    γ(2p − 1) = 1 this is ``dpo_loss``; with p = ½ the pair contributes no gradient."""
    weight = gamma * (2.0 * torch.as_tensor(prob, dtype=model_w.dtype, device=model_w.device) - 1.0)
    inside, model_diff, ref_diff = _dpo_inside(model_w, model_l, ref_w, ref_l, beta * weight)
    loss = -F.logsigmoid(inside).mean()
    return loss, {
        "implicit_accuracy": (inside > 0).float().mean().detach(),
        "margin": (ref_diff - model_diff).mean().detach(),
        "weighted_margin": (weight * (ref_diff - model_diff)).mean().detach(),
        "model_mse": 0.5 * (model_w.mean() + model_l.mean()).detach(),
        "ref_mse": 0.5 * (ref_w.mean() + ref_l.mean()).detach(),
    }


def dro_loss(model_expert, model_policy, ref_expert, ref_policy, margin: float = 0.001) -> tuple[torch.Tensor, dict]:
    """Diffusion-DRO (Wu et al. 2025; basiclab/DiffusionDRO train.py): with
    d_exp = mse_θ(expert) − mse_ref(expert) and d_pol = mse_θ(policy) − mse_ref(policy),
    loss = mean(max(0, d_exp − d_pol + m)); m = 0.001 official."""
    d_exp = model_expert - ref_expert
    d_pol = model_policy - ref_policy
    hinge = d_exp - d_pol + margin
    loss = torch.clamp(hinge, min=0).mean()
    return loss, {
        "implicit_accuracy": (d_exp < d_pol).float().mean().detach(),
        "margin": (d_pol - d_exp).mean().detach(),
        "active_share": (hinge > 0).float().mean().detach(),
    }
