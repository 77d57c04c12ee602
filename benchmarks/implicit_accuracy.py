"""Diffusion-DPO's implicit accuracy by timestep, on pairs of prompts a model never trained on.

The implicit reward of Diffusion-DPO (Wallace et al. 2023, eq. 14) says a model prefers the first
image of a pair at timestep t when it denoises it better, relative to the reference, than the
second: (ref_w − ref_l) − (model_w − model_l) > 0, with one noise draw shared by the pair. This
script measures how often that agrees with the pairs' order, in ten bins of t, for

- ``dpo``: the default regime (``conf/base/parameters_train.yml`` as it is, seed 0) trained on the
  pairs of the other training prompts (docs/regime.md's round 9 ran it at the default of the time,
  300 steps of 32 at lr 3e-5);
- ``sft-on-renders``: the base fine-tuned on ideal renders with their true captions (300 × 32,
  full UNet, lr 1e-4; ``fine_tuning_ceiling.py sft-on-renders``), a model known to be better than
  the base on the validation prompts;

and how often the base model itself denoises the preferred image better (ref_w < ref_l: what DPO's
loss starts from). Both orders are read: the annotators' labels (what DPO trains on) and the
shapes-oracle's (what the evaluation scores).

    kedro run --pipelines data,reward_model,rewards,cache      # the pairs and their cache
    .venv/bin/python benchmarks/implicit_accuracy.py              # ≈ 9 min on 2 cores

Writes ``reports/sweeps/implicit_accuracy.json`` and ``.png``. Validation prompts only for the
rewards; the held-out pairs are training prompts' pairs; the test prompts are never looked at.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

BINS = 10  # timestep bins of 100 over [0, 1000)
BASE = "base (ref_w < ref_l)"


def held_out(caption: str, share: int) -> bool:
    """A stable one-in-``share`` split of the training prompts (by a hash of the caption)."""
    return int(hashlib.sha256(caption.encode()).hexdigest(), 16) % share == 0


def accuracy_by_timestep(models: dict, reference, data, draws: int, batch_size: int, alphas,
                         prediction_type: str = "epsilon") -> dict:
    """{name: [accuracy per bin]} on every pair of ``data`` (CachedPairs, posterior-mean latents),
    ``draws`` timesteps a pair and bin, noise shared by the two images of a pair: for each of
    ``models``, Diffusion-DPO's implicit accuracy against ``reference`` (``objectives.dpo_loss``'s
    own), and under ``BASE`` how often the reference alone denoises the first image better."""
    import numpy as np
    import torch

    from smpo_pipeline.objectives import dpo_loss
    from smpo_pipeline.training.step import add_noise, per_sample_mse, prediction_target

    generator = torch.Generator().manual_seed(0)
    hits = {name: np.zeros(BINS) for name in (BASE, *models)}
    count = np.zeros(BINS)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.batch(range(start, min(start + batch_size, len(data))))
            n = len(batch)
            x0 = torch.cat([batch.latents_w, batch.latents_l])
            cond = (batch.prompt_embeds.repeat(2, 1, 1), batch.pooled.repeat(2, 1), batch.time_ids.repeat(2, 1))
            for b in range(BINS):
                for _ in range(draws):
                    t = torch.randint(100 * b, 100 * (b + 1), (n,), generator=generator).repeat(2)
                    noise = torch.randn(x0[:n].shape, generator=generator).repeat(2, 1, 1, 1)
                    x_t = add_noise(x0, noise, t, alphas)
                    target = prediction_target(x0, noise, t, alphas, prediction_type)
                    ref_w, ref_l = per_sample_mse(reference, x_t, t, target, *cond).chunk(2)
                    hits[BASE][b] += (ref_w < ref_l).sum().item()
                    for name, model in models.items():
                        m_w, m_l = per_sample_mse(model, x_t, t, target, *cond).chunk(2)
                        # β only scales the margin; its sign is what the accuracy counts
                        hits[name][b] += n * dpo_loss(m_w, m_l, ref_w, ref_l, beta=1.0)[1]["implicit_accuracy"].item()
                    count[b] += n
    return {name: (h / count).round(4).tolist() for name, h in hits.items()}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [100 * b + 50 for b in range(BINS)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, order in zip(axes, ("label", "oracle"), strict=True):
        for name, accuracy in result["accuracy"][order].items():
            ax.plot(centres, accuracy, marker="o", label=name)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(title=f"pairs ordered by the {'annotators' if order == 'label' else 'shapes-oracle'}",
               xlabel="timestep t")
    axes[0].set_ylabel("share of held-out pairs the model orders right")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Diffusion-DPO's implicit accuracy by timestep ({result['held_out_pairs']} held-out pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import copy

    import torch

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler, noise_schedule
    from smpo_pipeline.params import CacheParams
    from smpo_pipeline.runtime import apply_project_environment
    from smpo_pipeline.smoothing import training_pairs
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.data import CachedPairs

    apply_project_environment()  # offline, telemetry off
    from fine_tuning_ceiling import sft_on_renders
    from preference_regime import load_chain, merged_train, train_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=int, default=7, help="hold out the pairs of one training prompt in N")
    parser.add_argument("--draws", type=int, default=2, help="timesteps per pair and bin")
    parser.add_argument("--out", default="reports/sweeps")
    args = parser.parse_args()

    torch.manual_seed(0)
    chain, params = load_chain({})
    base = chain["base_model"]
    pairs = chain["preference_pairs"]
    out_mask = pairs.caption.map(lambda c: held_out(c, args.share))
    trained_on = {**chain, "preference_pairs": pairs[~out_mask]}
    dpo, _ = train_run({"objective": "dpo"}, 0, trained_on, params)
    sft = sft_on_renders(base, chain["prompts_validation"][:96], steps=300, every=300, batch_size=32, lr=1e-4,
                         lora_rank=0, latents="sample", images=4096)
    reference = copy.deepcopy(base.unet).eval()
    models = {"dpo": dpo.eval(), "sft-on-renders": sft.eval()}

    cache = CacheParams.model_validate(params["cache"])
    prints = Fingerprints.of(base, InversionConfig.of(cache.inversion), cache.storage_dtype)
    reader = CacheReader(Path(cache.root))
    schedule = noise_schedule(base)
    alphas = build_training_scheduler(schedule).alphas_cumprod
    gamma = merged_train(params, {}).gamma
    orders = {"label": training_pairs(pairs[out_mask], "label"),
              "oracle": training_pairs(pairs[out_mask], "reward", "reference", gamma)}
    result = {"held_out_pairs": len(orders["label"]), "share": args.share, "draws": args.draws,
              "bins": [[100 * b, 100 * (b + 1)] for b in range(BINS)], "accuracy": {}}
    for order, frame in orders.items():
        data = CachedPairs(frame, reader, prints, with_trajectories=False)
        result["accuracy"][order] = accuracy_by_timestep(models, reference, data, args.draws, 128, alphas,
                                                         schedule["prediction_type"])
        for name, accuracy in result["accuracy"][order].items():
            print(f"{order:>6} {name:<22}" + " ".join(f"{a:.2f}" for a in accuracy), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "implicit_accuracy.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "implicit_accuracy.png")
    print(f"wrote {out / 'implicit_accuracy.json'} and .png")


if __name__ == "__main__":
    main()
