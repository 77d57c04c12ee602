"""Nodes of the ``study`` pipeline: thin adapters over ``smpo_pipeline.world.disagreement`` (the
labels at each level) and ``smpo_pipeline.study`` (the grid of training cells)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smpo_pipeline.params import (
    CacheParams,
    DataParams,
    EvaluationParams,
    RewardModelParams,
    RewardsParams,
    StudyParams,
    TrainParams,
)

log = logging.getLogger(__name__)


def relabel_at_each_level(clean_pairs, study: StudyParams, data: DataParams):
    """Every clean pair (both splits) judged again at each level of ``study.levels`` by that
    level's annotators: (the labels, one row per pair and level; a report of each level's measured
    agreement with the shapes-oracle and with the shipped labels). The images and the pairs are the
    chain's own; only who judges them changes."""
    import pandas as pd

    from smpo_pipeline.ingest.images import decode_rgb, pair_image_bytes
    from smpo_pipeline.world.disagreement import DisagreementAxis, relabel
    from smpo_pipeline.world.oracle import read_image

    images = pair_image_bytes(clean_pairs, Path(data.work_dir))
    readings = {uid: read_image(decode_rgb(raw)) for uid, raw in images.items()}
    captions = clean_pairs.caption.tolist()
    sides = [[readings[u] for u in clean_pairs[f"image_{k}_uid"]] for k in (0, 1)]
    shipped = clean_pairs.label_0.to_numpy()
    axis = DisagreementAxis(**study.axis.model_dump())
    tables, levels = [], []
    for d in study.levels:
        population = axis.population(d, study.population_seed)
        # Seeded by the level itself: adding a level leaves every other level's labels as they were.
        rng = np.random.default_rng([study.labelling_seed, round(d * 1_000_000)])
        label_0, label_1, summary = relabel(captions, *sides, population, rng)
        tables.append(pd.DataFrame({"pair_id": clean_pairs.pair_id, "level": d, "label_0": label_0,
                                    "label_1": label_1, "is_tie": label_0 == 0.5}))
        decided = (label_0 != 0.5) & (shipped != 0.5)
        counts = summary.as_dict()
        level = {"level": d, "oracle_agreement": round(1 - counts["disagreement_with_oracle"], 4),
                 "tie_share": counts["tie_share"],
                 "agreement_with_shipped_labels": round(float((label_0[decided] == shipped[decided]).mean()), 4),
                 "pairs": counts["pairs"], "oracle_ordered_pairs": counts["non_tie_pairs_compared"]}
        log.info("study level %.2f: the labels agree with the oracle on %.1f%% of %d pairs it orders (ties %.1f%%)",
                 d, 100 * level["oracle_agreement"], summary.decided, 100 * level["tie_share"])
        levels.append(level)
    report = {"pairs": len(clean_pairs), "axis": study.axis.model_dump(), "population_seed": study.population_seed,
              "levels": levels}
    return pd.concat(tables, ignore_index=True), report


def plot_label_agreement(study_levels: dict):
    """Each level's measured agreement with the oracle: what the axis's numbers mean on these pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = study_levels["levels"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([v["level"] for v in levels], [v["oracle_agreement"] for v in levels], marker="o", label="with the oracle")
    ax.plot([v["level"] for v in levels], [v["agreement_with_shipped_labels"] for v in levels], marker="s",
            label="with the shipped labels")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="disagreement level d", ylabel="label agreement", ylim=(0.4, 1.02),
           title=f"{study_levels['pairs']} pairs labelled again")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _oracle_lookup(reward_scores, rewards: RewardsParams) -> dict:
    """(image uid, caption) → the reference reward model's score (the shapes-oracle), as the rewards
    pipeline scored it."""
    if rewards.reference is None:
        raise ValueError("the study's smpo-oracle and dpo arms read the reference reward model's scores: "
                         "set rewards.reference (the shapes-oracle) and re-run `kedro run --pipeline rewards`")
    ref = reward_scores[reward_scores.role == "reference"]
    return {(u, c): s for u, c, s in ref[["image_uid", "caption", "score"]].itertuples(index=False)}


def _oracle_scores(pairs, lookup: dict):
    """(s_0, s_1) of every pair by the shapes-oracle."""
    return tuple(np.array([lookup[u, c] for u, c in zip(pairs[f"image_{k}_uid"], pairs.caption, strict=True)])
                 for k in (0, 1))


def _table(pairs, s0, s1, bounds, rewards: RewardsParams):
    """The pair table SmPO reads, ordered and smoothed by the scores ``s0``, ``s1``."""
    from smpo_pipeline.smoothing import normalise, reward_oriented_pairs, score_bounds

    low, high = score_bounds(np.concatenate([s0, s1]), **bounds.model_dump())
    return reward_oriented_pairs(pairs, s0, s1, normalise(s0, low, high), normalise(s1, low, high),
                                 rewards.tau, rewards.gamma)


def _measure(clean_pairs, oracle, base_model, cache_report: dict, prompts: list[str], study: StudyParams,
             train: TrainParams, cache: CacheParams, rewards: RewardsParams, evaluation: EvaluationParams):
    """How every model is measured: the test prompts with the evaluation's protocol and seed rule,
    and the held-out (validation) pairs ordered by the oracle (pairs it scores alike left out)."""
    from smpo_pipeline.evaluation import prompt_seed_grid
    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.sampling import SamplingProtocol
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler, noise_schedule
    from smpo_pipeline.study import Measure
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.runs import check_cache

    e, p = study.evaluation, evaluation.protocol
    prompts = prompts[: e.max_prompts] if e.max_prompts else prompts
    grid, seeds = prompt_seed_grid(prompts, e.seeds_per_prompt, evaluation.seed, same_seeds_for_every_prompt=True)
    resolution = p.resolution or base_model.unet.config.sample_size * base_model.vae_scale_factor
    protocol = SamplingProtocol(p.steps, p.guidance_scale, resolution, p.scheduler)
    val = (clean_pairs.split == "validation").to_numpy() & (oracle[0] != oracle[1])
    heldout = _table(clean_pairs[val].reset_index(drop=True), oracle[0][val], oracle[1][val],
                     rewards.reference.bounds, rewards)
    heldout = heldout.iloc[: e.heldout_pairs] if e.heldout_pairs else heldout
    inversion = InversionConfig.of(cache.inversion)
    prints = Fingerprints.of(base_model, inversion, cache.storage_dtype)
    check_cache(cache_report, prints, inversion, trajectories=False)
    pairs = CachedPairs(heldout, CacheReader(Path(cache.root)), prints, with_trajectories=False)
    schedule = noise_schedule(base_model)
    return Measure(grid, seeds, protocol, evaluation.batch_size, pairs, e.heldout_draws,
                   build_training_scheduler(schedule).alphas_cumprod, train.timestep_range, base_model.unet,
                   prediction_type=schedule["prediction_type"])


def train_and_measure_cells(study_labels, clean_pairs, reward_scores, base_model, cache_report: dict,
                            evaluation_prompts: list[str], study: StudyParams, train: TrainParams, cache: CacheParams,
                            rewards: RewardsParams, reward_model: RewardModelParams, evaluation: EvaluationParams,
                            data: DataParams) -> dict:
    """Every cell of the grid (level × arm × seed): at each level a reward model learned from its
    labels and the level's pair tables, then each cell trained and measured, or its kept record
    reused (``smpo_pipeline.study.run_grid``). Returns every record and each level's reward model."""
    from smpo_pipeline.ingest.images import decode_rgb, pair_image_bytes
    from smpo_pipeline.study import ARMS, held_out_agreement, level_reward_model, pairs_at_level, run_grid

    train = study.train_params(train)
    lookup = _oracle_lookup(reward_scores, rewards)
    oracle = _oracle_scores(clean_pairs, lookup)
    learned = any(ARMS[arm].scored_by == "learned" for arm in study.arms)
    images = ({uid: decode_rgb(raw) for uid, raw in pair_image_bytes(clean_pairs, Path(data.work_dir)).items()}
              if learned else {})
    tables, reward_models = {}, {}
    for level in study.levels:
        pairs = pairs_at_level(clean_pairs, study_labels, level, data.drop_ties)
        o0, o1 = _oracle_scores(pairs, lookup)
        tables[level] = {"oracle": _table(pairs, o0, o1, rewards.reference.bounds, rewards)}
        if learned:
            found = level_reward_model(pairs, images, reward_model, study.reward_model,
                                       Path(study.checkpoint_root) / "reward_models")
            tables[level]["learned"] = _table(pairs, found["score_0"], found["score_1"], rewards.bounds, rewards)
            reward_models[str(level)] = {"run_id": found["run_id"], "pairs": len(pairs)} | held_out_agreement(
                pairs, found["score_0"], found["score_1"], o0, o1)
            log.info("study level %.2f: its reward model agrees with the held-out labels on %.1f%%, with the oracle "
                     "on %.1f%%", level, 100 * reward_models[str(level)]["label_agreement"],
                     100 * reward_models[str(level)]["oracle_agreement"])
    measure = _measure(clean_pairs, oracle, base_model, cache_report, evaluation_prompts, study, train, cache,
                       rewards, evaluation)
    return run_grid(study, tables, measure, base_model, cache_report, train, cache) | {"reward_models": reward_models}


ARM_LABELS = {"dpo": "Diffusion-DPO (the level's labels)", "smpo-learned": "SmPO, learned reward model",
              "smpo-oracle": "SmPO, shapes-oracle"}


def summarize_study(study_cells: dict, study_levels: dict, study: StudyParams) -> tuple[dict, str]:
    """The study's numbers (``reports/study.json``, DVC metrics) and the same as a Markdown table."""
    from smpo_pipeline.study import summarize_grid

    report = summarize_grid(study_cells, study_levels["levels"], study)
    for row in report["levels"]:
        if str(row["level"]) in study_cells.get("reward_models", {}):
            row["reward_model"] = study_cells["reward_models"][str(row["level"])]
    return report, _markdown(report)


def _markdown(report: dict) -> str:
    def ci(v: dict, unit: str = "reward") -> str:
        if unit == "share":
            return f"{100 * v['estimate']:.1f} % [{100 * v['ci_low']:.1f}, {100 * v['ci_high']:.1f}]"
        if unit == "points":
            return f"{100 * v['estimate']:+.1f} pts [{100 * v['ci_low']:+.1f}, {100 * v['ci_high']:+.1f}]"
        return f"{v['estimate']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"

    lines = [f"# The disagreement study: {len(report['seeds'])} training seeds per cell, {report['test_images']} "
             f"test images per model (base mean oracle reward {report['base_mean_reward']:.3f})", "",
             "| level d | labels agree with the oracle | level's reward model agrees with the oracle | arm "
             "| gain over the base | gain over DPO | held-out implicit agreement with the oracle | … over DPO's |",
             "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in report["levels"]:
        rm = row.get("reward_model", {}).get("oracle_agreement")
        for arm, v in row["arms"].items():
            lines.append(f"| {row['level']:g} | {100 * row['oracle_agreement']:.1f} % | "
                         f"{'' if rm is None else f'{100 * rm:.1f} %'} | {ARM_LABELS[arm]} | {ci(v['gain'])} | "
                         f"{ci(v['gain_over_dpo']) if 'gain_over_dpo' in v else ''} | {ci(v['heldout_agreement'], 'share')} | "
                         f"{ci(v['heldout_agreement_over_dpo'], 'points') if 'gain_over_dpo' in v else ''} |")
    lines += ["", "Intervals: 95 %, resampling the test prompts (held-out pairs) and the training seeds."]
    return "\n".join(lines) + "\n"


def plot_study(study: dict):
    """Gain over the base (test prompts) and held-out implicit agreement with the oracle, against
    the labels' measured agreement with the oracle: one line per arm, its band the 95 % interval
    over prompts (pairs) and training seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [row["oracle_agreement"] for row in study["levels"]]
    for arm in study["arms"]:
        rows = [row["arms"][arm] for row in study["levels"] if arm in row["arms"]]
        if len(rows) != len(x):
            continue
        for ax, metric in zip(axes, ("gain", "heldout_agreement"), strict=True):
            v = [r[metric] for r in rows]
            line = ax.plot(x, [p["estimate"] for p in v], marker="o", label=ARM_LABELS[arm])[0]
            ax.fill_between(x, [p["ci_low"] for p in v], [p["ci_high"] for p in v], color=line.get_color(), alpha=0.18)
    axes[0].axhline(0, color="grey", lw=0.8, ls="--")
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    seeds = len(study["seeds"])
    axes[0].set(xlabel="labels' agreement with the oracle", ylabel="gain in mean shapes-oracle reward over the base",
                title=f"Test prompts ({study['test_images']} images a model, {seeds} seeds)")
    axes[1].set(xlabel="labels' agreement with the oracle", ylabel="implicit reward ranks the pair as the oracle",
                title="Held-out pairs (validation split)")
    ticks = [f"{a:.0%}\nd = {row['level']:g}" for a, row in zip(x, study["levels"], strict=True)]
    for ax in axes:
        ax.set_xticks(x, ticks)
        ax.invert_xaxis()  # left to right: the annotators disagree more
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("DPO and SmPO as the annotators disagree more (bands: 95 % over prompts and seeds)", fontsize=10)
    fig.tight_layout()
    return fig
