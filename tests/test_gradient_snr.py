"""The estimator behind benchmarks/gradient_snr.py: on synthetic batch gradients with a known
signal and per-pair noise it recovers ρ = ‖μ‖² / tr Σ, and the jackknife covers the truth."""

from __future__ import annotations

import sys

import torch

from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))  # the benchmarks import one another as scripts

from gradient_snr import cosine, group_statistics, jackknife_rho, parameter_groups, signal_statistics


def batches(mu, n: int, k: int, sigma: float, seed: int):
    """k batch means of n per-pair gradients μ + σ·N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    return mu + sigma / n**0.5 * torch.randn(k, mu.numel(), generator=g, dtype=torch.float64)


def test_the_signal_to_noise_estimate_recovers_a_known_ratio():
    p, n, sigma = 20000, 64, 1.0
    mu = torch.full((p,), 0.02, dtype=torch.float64)  # ‖μ‖² = 8, tr Σ = 20000: ρ = 4e-4
    g = batches(mu, n, 64, sigma, 0)
    gram = (g @ g.T).numpy()
    stats = signal_statistics(gram, n)
    se = jackknife_rho(gram, n)
    assert abs(stats["variance"] / (p * sigma**2) - 1) < 0.01
    assert abs(stats["rho"] - 4e-4) < 3 * se and se < 2e-4
    # No signal: ρ is zero within its error (the cross term is unbiased, the plain norm is not).
    null = batches(torch.zeros(p, dtype=torch.float64), n, 64, sigma, 1)
    null_gram = (null @ null.T).numpy()
    assert abs(signal_statistics(null_gram, n)["rho"]) < 3 * jackknife_rho(null_gram, n)
    assert float(null.mean(0) @ null.mean(0)) > 0.1  # what a naive ‖mean‖² would have called signal
    # The cosine of two independent estimates of the same μ is about 1, of orthogonal μ's about 0.
    other = batches(mu, n, 64, sigma, 2)
    assert abs(cosine(g, other, gram, (other @ other.T).numpy()) - 1) < 0.2
    flipped = mu.clone()
    flipped[: p // 2] *= -1
    orthogonal = batches(flipped, n, 64, sigma, 3)
    assert abs(cosine(g, orthogonal, gram, (orthogonal @ orthogonal.T).numpy())) < 0.2


def test_parameter_groups_name_kinds_and_levels_and_find_where_the_signal_is():
    names = [("conv_in.weight", 300), ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", 200),
             ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight", 200),
             ("mid_block.attentions.0.transformer_blocks.0.attn1.to_v.weight", 100),
             ("up_blocks.0.resnets.0.time_emb_proj.weight", 200)]
    groups = parameter_groups(names)
    assert groups["kind: cross-attention k, v (the text's entry)"] == [(300, 500)]
    assert groups["kind: cross-attention q, out"] == [(500, 700)]
    assert groups["kind: self-attention"] == [(700, 800)]
    assert groups["kind: time and pooled-text embeddings"] == [(800, 1000)]
    assert groups["kind: convolutions, norms (ResNets, resampling, in/out)"] == [(0, 300)]
    assert groups["level: down_blocks.1"] == [(300, 500), (500, 700)] and groups["level: mid_block"] == [(700, 800)]
    # All of the signal in the cross-attention k, v: that group carries it, the others carry none.
    mu = torch.zeros(1000, dtype=torch.float64)
    mu[300:500] = 0.1
    stats = group_statistics(batches(mu, 64, 64, 1.0, 4), groups, 64)
    assert abs(stats["kind: cross-attention k, v (the text's entry)"]["signal_share"] - 1) < 0.2
    assert abs(stats["kind: self-attention"]["signal_share"]) < 0.1
    assert stats["kind: cross-attention k, v (the text's entry)"]["parameter_share"] == 0.2
