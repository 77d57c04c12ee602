"""How much of a preference objective's gradient is signal, at the base model, per pair.

Adam moves every weight by about the learning rate a step, whatever share of the step's gradient is
signal, so a step whose mean gradient is mostly noise spends that movement on a random walk. This
measures the share. For each configuration of a sweep file (the format of ``preference_regime.py``:
``objective`` dpo | smpo | sft, ``train`` overrides, ``order``) it draws K independent micro-batches
of the chain's training pairs exactly as the trainer does (``trainer.PairLoss``: the pairs, caption
dropout, timesteps and noise), takes the gradient g_k of each batch's loss at the base model (policy
= reference), and estimates, with n pairs a batch,

- ‖μ‖², the squared norm of the expected gradient, by the mean of g_j·g_k over j ≠ k (unbiased);
- tr Σ, the per-pair gradient variance, by n (mean ‖g_k‖² − ‖μ‖²);
- ρ = ‖μ‖² / tr Σ, the signal-to-noise ratio of one pair, and 1/ρ, the pairs a step needs for its
  mean gradient to be as much signal as noise (a step of N pairs has the share Nρ / (1 + Nρ));
- the cosine between every configuration's expected gradient and the first one's, from independent
  batches (μ_a·μ_b by the mean of g_a·g_b).

Intervals: jackknife over the K batches. Nothing is trained and no prompt is sampled (validation or
test): the gradients are those of the training pairs.

    kedro run --pipelines data,reward_model,rewards,cache        # the pairs and their cache
    .venv/bin/python benchmarks/gradient_snr.py benchmarks/sweeps/gradient_snr.yml     # ≈ 1 min a configuration

Writes ``reports/sweeps/<name>.json`` (a configuration measured again replaces its earlier entry).
The cosines are estimates from finite batches and can leave [−1, 1] where a ρ is small.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


def batch_gradients(setup: dict, base_unet, batches: int, accumulate: int, seed: int):
    """[K, P] independent gradients at the base model (float32), K = ``batches``, each the mean of
    ``accumulate`` micro-batch gradients, drawn as ``trainer.PairLoss`` draws a step's batches; and
    the (name, size) of the P columns' parameters, in order."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from smpo_pipeline.training.trainer import PairLoss

    loss_of = PairLoss(setup["data"], setup["config"], setup["inversion"], setup["schedule"])
    policy = copy.deepcopy(base_unet).train()
    reference = copy.deepcopy(base_unet).eval().requires_grad_(False)
    named = [(name, p) for name, p in policy.named_parameters() if p.requires_grad]
    weights = [p for _, p in named]
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    rows = []
    for _ in tqdm(range(batches), desc=setup["config"].objective, leave=False):
        g = torch.zeros(sum(w.numel() for w in weights), dtype=torch.float64)
        for _ in range(accumulate):
            loss, _ = loss_of(policy, reference, rng, generator)
            g += torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, weights)]).double() / accumulate
        rows.append(g.float())
    return torch.stack(rows), [(name, p.numel()) for name, p in named]


def signal_statistics(gram, n: int) -> dict:
    """‖μ‖², tr Σ and ρ from the Gram matrix [K, K] of K batch gradients of n pairs each."""
    import numpy as np

    k = gram.shape[0]
    squares = np.trace(gram)
    cross = (gram.sum() - squares) / (k * (k - 1))  # the mean of g_j·g_k over j ≠ k: unbiased ‖μ‖²
    variance = n * (squares / k - cross)
    return {"signal": float(cross), "variance": float(variance), "rho": float(cross / variance)}


def jackknife_rho(gram, n: int) -> float:
    """The jackknife standard error of ρ over the K batches."""
    import numpy as np

    k = gram.shape[0]
    values = np.array([signal_statistics(np.delete(np.delete(gram, i, 0), i, 1), n)["rho"] for i in range(k)])
    return float(np.sqrt((k - 1) / k * ((values - values.mean()) ** 2).sum()))


# Parameter groups of a diffusers UNet2DConditionModel, by what they do: the first pattern that a
# parameter's name contains names its group.
KINDS = (("cross-attention k, v (the text's entry)", ("attn2.to_k", "attn2.to_v")),
         ("cross-attention q, out", ("attn2.",)),
         ("self-attention", ("attn1.",)),
         ("transformer feed-forward", ("ff.",)),
         ("transformer norms, projections", ("attentions.",)),
         ("time and pooled-text embeddings", ("time_embedding", "add_embedding", "time_emb_proj")),
         ("convolutions, norms (ResNets, resampling, in/out)", ("",)))


def parameter_groups(named_sizes: list[tuple[str, int]]) -> dict[str, list[tuple[int, int]]]:
    """(start, end) column ranges of each group of a flattened gradient, by kind (``KINDS``) and by
    level (the name's first two parts: ``down_blocks.0``, ``mid_block`` …)."""
    groups: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for name, size in named_sizes:
        kind = next(label for label, patterns in KINDS if any(p in name for p in patterns))
        parts = name.split(".")
        level = ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]
        for key in (f"kind: {kind}", f"level: {level}"):
            groups.setdefault(key, []).append((start, start + size))
        start += size
    return groups


def group_statistics(g, groups: dict[str, list[tuple[int, int]]], n: int) -> dict[str, dict]:
    """``signal_statistics`` of each group's columns of the batch gradients g [K, P], with the
    group's share of the parameters and of the whole gradient's ‖μ‖²."""
    import torch

    total = signal_statistics((g.double() @ g.double().T).numpy(), n)["signal"]
    out = {}
    for key, ranges in groups.items():
        part = torch.cat([g[:, a:b] for a, b in ranges], dim=1).double()
        stats = signal_statistics((part @ part.T).numpy(), n)
        out[key] = stats | {"parameters": part.shape[1], "parameter_share": part.shape[1] / g.shape[1],
                            "signal_share": stats["signal"] / total if total > 0 else float("nan")}
    return out


def cosine(a, b, gram_a, gram_b) -> float:
    """cos(μ_a, μ_b) from independent batch gradients a [K, P] and b [K', P] (and their Gram
    matrices): μ_a·μ_b by the mean of a_j·b_k, each norm by its unbiased estimate."""
    dot = float(a.double().mean(0) @ b.double().mean(0))
    norms = [signal_statistics(g, 1)["signal"] for g in (gram_a, gram_b)]
    return dot / (max(norms[0], 1e-30) * max(norms[1], 1e-30)) ** 0.5


def main() -> None:
    import yaml
    from preference_regime import load_chain, merge, run_setup

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # offline, telemetry off
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="YAML: {name, train?: {...}, configs: [{name, objective, train?, order?}]}")
    parser.add_argument("--batches", type=int, default=48, help="independent gradients a configuration (K)")
    parser.add_argument("--accumulate", type=int, default=8,
                        help="micro-batches averaged into each of the K gradients (n = batch_size × this)")
    parser.add_argument("--only", nargs="*", help="measure only these configuration names")
    parser.add_argument("--groups", action="store_true",
                        help="also ρ of each parameter group (by kind and by level) and its share of the signal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/sweeps")
    args = parser.parse_args()
    sweep = yaml.safe_load(Path(args.sweep).read_text())
    chain, params = load_chain({})
    params["train"] = merge(params["train"], sweep.get("train", {}))
    base = chain["base_model"].unet
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{sweep['name']}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}  # earlier configurations kept
    first = None  # the first configuration's name, gradients and Gram matrix, for the cosines
    print(f"{'configuration':<22} {'pairs/batch':>11} {'rho':>9} {'± s.e.':>8} {'pairs for SNR 1':>15} "
          f"{'signal share at 256':>19} {'cos to first':>12} {'s/batch':>7}")  # cos: noisy where ρ is small
    for config in [c for c in sweep["configs"] if not args.only or c["name"] in args.only]:
        setup = run_setup(config, args.seed, chain, params)
        n = setup["config"].batch_size * args.accumulate
        start = time.perf_counter()
        g, named_sizes = batch_gradients(setup, base, args.batches, args.accumulate, args.seed)
        seconds = (time.perf_counter() - start) / args.batches
        gram = (g.double() @ g.double().T).numpy()
        stats = signal_statistics(gram, n)
        se = jackknife_rho(gram, n)
        cos = cosine(g, first[1], gram, first[2]) if first is not None else 1.0
        first = (config["name"], g, gram) if first is None else first
        rho = stats["rho"]
        results[config["name"]] = stats | {"rho_standard_error": se, "pairs_per_batch": n, "batches": args.batches,
                                           "seed": args.seed, "cosine": {first[0]: cos}, "seconds_per_batch": seconds,
                                           "config": config}
        if args.groups:
            results[config["name"]]["groups"] = group_statistics(g, parameter_groups(named_sizes), n)
        path.write_text(json.dumps(results, indent=1))
        need = f"{1 / rho:,.0f}" if rho > 0 else "—"
        print(f"{config['name']:<22} {n:>11} {rho:>9.2e} {se:>8.1e} {need:>15} "
              f"{256 * rho / (1 + 256 * rho) if rho > 0 else 0.0:>19.1%} {cos:>12.2f} {seconds:>7.2f}", flush=True)
        for key, group in results[config["name"]].get("groups", {}).items():
            print(f"    {key:<58} {group['parameter_share']:>6.1%} of the weights, {group['signal_share']:>7.1%} "
                  f"of ‖μ‖², rho {group['rho']:>9.2e}")


if __name__ == "__main__":
    main()
