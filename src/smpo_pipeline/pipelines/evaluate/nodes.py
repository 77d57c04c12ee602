"""Nodes of the ``evaluate`` pipeline: thin adapters over ``smpo_pipeline.evaluation`` and
``smpo_pipeline.models.sampling``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from smpo_pipeline.params import EvaluationParams

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["model", "replica", "model_fingerprint", "prompt_index", "prompt", "seed", "path"]


def _prompts_and_seeds(prompts: list[str], evaluation: EvaluationParams) -> tuple[list[int], list[str], list[int]]:
    from smpo_pipeline.evaluation import prompt_seed_grid

    prompts = prompts[: evaluation.max_prompts] if evaluation.max_prompts else prompts
    n = evaluation.seeds_per_prompt
    grid, seeds = prompt_seed_grid(prompts, n, evaluation.seed, same_seeds_for_every_prompt=True)
    return [i for i in range(len(prompts)) for _ in range(n)], grid, seeds


def _protocol(pipe, evaluation: EvaluationParams):
    from smpo_pipeline.models.sampling import SamplingProtocol

    p = evaluation.protocol
    resolution = p.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return SamplingProtocol(p.steps, p.guidance_scale, resolution, p.scheduler)


def generate_images(name: str, model, replicas: dict, prompts: list[str], evaluation: EvaluationParams) -> pd.DataFrame:
    """Images of ``model`` and of each of its replicas (the same pipeline with another training
    seed's UNet) for every (prompt, seed), reused from earlier runs when the weights, prompt, seed
    and protocol are the same; an index of them (empty when ``name`` is not evaluated, or was not
    trained)."""
    from smpo_pipeline.datasets import NotTrained
    from smpo_pipeline.models.sampling import generate_cached, model_fingerprint

    if name not in evaluation.models:
        return pd.DataFrame(columns=INDEX_COLUMNS)
    if isinstance(model, NotTrained):
        log.warning("evaluation.models lists %s, but it was not trained (%s): it is left out", name, model.reason)
        return pd.DataFrame(columns=INDEX_COLUMNS)
    indices, prompt_list, seeds = _prompts_and_seeds(prompts, evaluation)
    runs = [model] + [type(model)(**{**model.components, "unet": unet}) for _, unet in sorted(replicas.items())]
    frames = []
    for replica, pipe in enumerate(runs):
        fingerprint = model_fingerprint(pipe)
        paths = generate_cached(pipe, fingerprint, prompt_list, seeds, _protocol(pipe, evaluation),
                                Path(evaluation.image_root), evaluation.batch_size,
                                desc=f"evaluating {name}" + (f" (run {replica + 1} of {len(runs)})" if len(runs) > 1 else ""))
        frames.append(pd.DataFrame({"model": name, "replica": replica, "model_fingerprint": fingerprint,
                                    "prompt_index": indices, "prompt": prompt_list, "seed": seeds,
                                    "path": [str(p) for p in paths]}))
    return pd.concat(frames, ignore_index=True)


def generate_base_images(base_model, evaluation_prompts: list[str], evaluation: EvaluationParams) -> pd.DataFrame:
    return generate_images("base", base_model, {}, evaluation_prompts, evaluation)


def generate_dpo_images(dpo_model, dpo_replicas: dict, evaluation_prompts: list[str],
                        evaluation: EvaluationParams) -> pd.DataFrame:
    return generate_images("dpo", dpo_model, dpo_replicas, evaluation_prompts, evaluation)


def generate_smpo_images(smpo_model, smpo_replicas: dict, evaluation_prompts: list[str],
                         evaluation: EvaluationParams) -> pd.DataFrame:
    return generate_images("smpo", smpo_model, smpo_replicas, evaluation_prompts, evaluation)


def generate_dro_images(dro_model, dro_replicas: dict, evaluation_prompts: list[str],
                        evaluation: EvaluationParams) -> pd.DataFrame:
    return generate_images("dro", dro_model, dro_replicas, evaluation_prompts, evaluation)


def measure_attributes(base_images: pd.DataFrame, dpo_images: pd.DataFrame, smpo_images: pd.DataFrame,
                       dro_images: pd.DataFrame, evaluation: EvaluationParams) -> dict:
    """What each model changed: the share of its images whose shapes-oracle reading matches the
    prompt, per attribute (background, colour, position, size, shape), over all its runs. Only for
    prompts of the embedded world's grammar; other prompt sets return an empty report."""
    from PIL import Image

    from smpo_pipeline.world.grammar import parse_prompt
    from smpo_pipeline.world.oracle import ATTRIBUTES, read_image

    images = pd.concat([f for f in (base_images, dpo_images, smpo_images, dro_images) if len(f)], ignore_index=True)
    try:
        compositions = {p: parse_prompt(p) for p in images.prompt.unique()}
    except ValueError:
        log.info("the evaluation prompts are not shapes-world prompts: no attribute accuracies")
        return {}
    report = {}
    for model, frame in images.groupby("model", sort=False):
        hits = dict.fromkeys(ATTRIBUTES, 0)
        for path, prompt in zip(frame.path, frame.prompt, strict=True):
            with Image.open(path) as image:
                right = read_image(image.convert("RGB")).right(compositions[prompt])
            for attribute in ATTRIBUTES:
                hits[attribute] += right[attribute]
        report[model] = {"images": len(frame), "runs": int(frame.replica.nunique()),
                         "accuracy": {a: round(h / len(frame), 4) for a, h in hits.items()}}
    models = [m for m in evaluation.models if m in report]
    print("Attribute accuracy (share of images that show what the prompt says):")  # noqa: T201
    print(f"{'':>6} " + " ".join(f"{a:>10}" for a in ATTRIBUTES))  # noqa: T201
    for m in models:
        print(f"{m:>6} " + " ".join(f"{report[m]['accuracy'][a]:>10.1%}" for a in ATTRIBUTES))  # noqa: T201
    return {m: report[m] for m in models}


def score_images(base_images: pd.DataFrame, dpo_images: pd.DataFrame, smpo_images: pd.DataFrame,
                 dro_images: pd.DataFrame, evaluation: EvaluationParams) -> pd.DataFrame:
    """Every image scored by every configured reward model: one row per (image, reward model).
    Scores are kept under ``<image_root>/scores/<reward model id>/``, keyed by the image's name (a
    hash of model weights, prompt, seed and protocol) and prompt, so a re-run scores only new images."""
    from smpo_pipeline.rewards.cache import ScoreCache, score_files
    from smpo_pipeline.rewards.models import build_reward_model

    images = pd.concat([f for f in (base_images, dpo_images, smpo_images, dro_images) if len(f)], ignore_index=True)
    items = [(f"{Path(p).parent.name}/{Path(p).name}", prompt, Path(p)) for p, prompt in zip(images.path, images.prompt,
                                                                                              strict=True)]
    frames = []
    for spec in evaluation.reward_models:
        reward = build_reward_model(spec.name, **spec.options)
        cache = ScoreCache(Path(evaluation.image_root) / "scores", reward.model_id)
        scores, scored = score_files(items, reward, cache, evaluation.batch_size, desc=f"scoring ({spec.name})")
        log.info("%s: %d images scored, %d from the score cache", spec.name, scored, len(items) - scored)
        frames.append(images.assign(reward_model=spec.name, reward_model_id=reward.model_id, score=scores))
    return pd.concat(frames, ignore_index=True)


def summarize_evaluation(evaluation_scores: pd.DataFrame, evaluation: EvaluationParams) -> tuple[dict, str]:
    """Means, medians, standard errors and win rates with bootstrap CIs (``reports/evaluation.json``)
    and the same as a Markdown table (``reports/evaluation.md``); the table is also printed."""
    from smpo_pipeline.evaluation import markdown_table, summarize

    models = [m for m in evaluation.models if m in set(evaluation_scores.model)]
    p = evaluation.protocol
    protocol = {"prompt_set": evaluation.prompt_set, "prompts": int(evaluation_scores.prompt_index.nunique()),
                "seeds_per_prompt": evaluation.seeds_per_prompt, "scheduler": p.scheduler or "model's own",
                "steps": p.steps, "guidance_scale": p.guidance_scale, "resolution": p.resolution or "native",
                "bootstrap_samples": evaluation.bootstrap_samples, "confidence": evaluation.confidence}
    report = summarize(evaluation_scores, models, evaluation.reference, evaluation.bootstrap_samples,
                       evaluation.confidence, evaluation.seed)
    table = markdown_table(report, protocol, evaluation.reference)
    print(table)  # noqa: T201 - the result a user ran this for
    fingerprints = evaluation_scores.groupby("model").model_fingerprint.first().to_dict()
    return {"protocol": protocol, "model_fingerprints": fingerprints, "rewards": report}, table


def plot_reward_distributions(evaluation_scores: pd.DataFrame, evaluation: EvaluationParams):
    """One panel per reward model: each model's score distribution (histogram outlines + mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rewards = list(dict.fromkeys(evaluation_scores.reward_model))
    fig, axes = plt.subplots(1, len(rewards), figsize=(6 * len(rewards), 4), squeeze=False)
    for ax, reward in zip(axes[0], rewards, strict=True):
        frame = evaluation_scores[evaluation_scores.reward_model == reward]
        bins = np.histogram_bin_edges(frame.score, bins=30)
        for model in [m for m in evaluation.models if m in set(frame.model)]:
            s = frame[frame.model == model].score
            line = ax.hist(s, bins=bins, histtype="step", linewidth=1.6, label=f"{model} (mean {s.mean():.3f})")[2][0]
            ax.axvline(s.mean(), color=line.get_edgecolor(), linestyle="--", linewidth=1)
        ax.set(title=f"{reward} on {evaluation.prompt_set} prompts", xlabel="score", ylabel="images")
        ax.legend()
    fig.tight_layout()
    return fig


def draw_image_grid(base_images: pd.DataFrame, dpo_images: pd.DataFrame, smpo_images: pd.DataFrame,
                    dro_images: pd.DataFrame, evaluation: EvaluationParams):
    """Rows = prompts (spread over the set), columns = models (each one's first training run), one
    image seed across a row."""
    import numpy as np
    from PIL import Image

    from smpo_pipeline.evaluation import image_grid

    frames = {f.model.iloc[0]: f[f.replica == 0] for f in (base_images, dpo_images, smpo_images, dro_images) if len(f)}
    models = [m for m in evaluation.models if m in frames]
    first = frames[models[0]]
    seed = evaluation.seed + min(evaluation.grid.seed_index, evaluation.seeds_per_prompt - 1)
    prompt_indices = sorted(first.prompt_index.unique())
    picks = [prompt_indices[int(i)] for i in np.linspace(0, len(prompt_indices) - 1,
                                                         min(evaluation.grid.prompts, len(prompt_indices)))]
    rows, labels = [], []
    for i in picks:
        row = [frames[m][(frames[m].prompt_index == i) & (frames[m].seed == seed)].iloc[0] for m in models]
        rows.append([Image.open(r.path) for r in row])
        labels.append(row[0].prompt)
    return image_grid(rows, labels, models, cell=evaluation.grid.cell)
