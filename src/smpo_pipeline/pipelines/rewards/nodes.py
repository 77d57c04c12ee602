"""Nodes of the ``rewards`` pipeline: thin adapters over ``smpo_pipeline.rewards`` and
``smpo_pipeline.smoothing``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smpo_pipeline.params import DataParams, RewardsParams

log = logging.getLogger(__name__)


def _score_with(name: str, options: dict, clean_pairs, rewards: RewardsParams, data: DataParams):
    import pandas as pd

    from smpo_pipeline.rewards import build_reward_model
    from smpo_pipeline.rewards.cache import ScoreCache, caption_key, score_missing

    model = build_reward_model(name, **options)
    cache = ScoreCache(Path(rewards.cache_dir), model.model_id)
    requests = [
        (row[f"image_{k}_uid"], row["caption"], row[f"image_{k}_file"])
        for row in clean_pairs.to_dict("records") for k in (0, 1)
    ]
    counts = score_missing(requests, Path(data.work_dir), model, cache, rewards.batch_size)
    log.info("Rewards (%s): %d images, %d from cache, %d scored", model.model_id, *counts.values())
    scores = cache.load()
    return pd.DataFrame(
        [(uid, caption, scores[uid, caption_key(caption)]) for uid, caption, _ in dict.fromkeys(requests)],
        columns=["image_uid", "caption", "score"],
    ).assign(model_id=model.model_id)


def score_pair_images(clean_pairs, reward_model_training: dict, rewards: RewardsParams, data: DataParams):
    """Both images of every clean pair, scored against the pair's caption by the smoothing reward
    model (``role`` smoothing) and, with ``rewards.reference``, by the reference too (``role``
    reference). Scores already on disk for a reward model are reused; a killed run resumes where it
    stopped. ``reward_model_training`` (the ``reward_model`` pipeline's summary) orders this after
    the reward model is trained, where the smoothing reward is the learned one."""
    import pandas as pd

    from smpo_pipeline.keys import train_pairs_digest

    if reward_model_training.get("trained"):
        trained_on, these = reward_model_training.get("train_pairs_digest"), train_pairs_digest(clean_pairs)
        if trained_on != these:
            # A partial run after new raw pairs (`--pipelines data,rewards`) would otherwise smooth
            # them with the model on disk, learned from the old ones.
            raise ValueError(
                f"reward_model_training: the reward model of run {reward_model_training.get('run_id')} was trained "
                f"on other pairs (train-split digest {trained_on}, the clean pairs' is {these}); "
                "run `kedro run --pipelines reward_model,rewards` to train it on these")
        log.info("Rewards: the reward_model pipeline trained run %s; smoothing with %s (%s)",
                 reward_model_training["run_id"], rewards.model, rewards.model_options.get("model_path", ""))
    frames = [_score_with(rewards.model, rewards.model_options, clean_pairs, rewards, data).assign(role="smoothing")]
    if rewards.reference is not None:
        ref = rewards.reference
        frames.append(_score_with(ref.model, ref.model_options, clean_pairs, rewards, data).assign(role="reference"))
    return pd.concat(frames, ignore_index=True)


def _normalised_scores(pairs, scores, bounds):
    """(s_0, s_1, r'_0, r'_1, (low, high)) of every pair, by one reward model's scores."""
    from smpo_pipeline.smoothing import normalise, score_bounds

    lookup = {(u, c): s for u, c, s in scores[["image_uid", "caption", "score"]].itertuples(index=False)}
    s0 = np.array([lookup[u, c] for u, c in zip(pairs.image_0_uid, pairs.caption, strict=True)])
    s1 = np.array([lookup[u, c] for u, c in zip(pairs.image_1_uid, pairs.caption, strict=True)])
    low, high = score_bounds(scores["score"], **bounds.model_dump())
    return s0, s1, normalise(s0, low, high), normalise(s1, low, high), (low, high)


def _quantiles(x) -> dict[str, float]:
    return {f"q{int(k * 100):02d}": round(float(np.quantile(x, k)), 5) for k in (0.05, 0.25, 0.5, 0.75, 0.95)}


def smooth_preferences(clean_pairs, reward_scores, rewards: RewardsParams):
    """Per pair: both orders (reward, human label) and whether they agree; the pair oriented by the
    reward (SmPO's winner), its normalised rewards, the smoothed probability p and the SmPO weight
    γ(2p − 1). Training re-orients it per objective (``train.pair_order``, ``smoothing.orient_pairs``)."""

    from smpo_pipeline.smoothing import reward_oriented_pairs

    b = rewards.bounds
    smoothing = reward_scores[reward_scores.role == "smoothing"]
    s0, s1, r0, r1, (low, high) = _normalised_scores(clean_pairs, smoothing, b)
    pairs = reward_oriented_pairs(clean_pairs, s0, s1, r0, r1, rewards.tau, rewards.gamma)
    decided = ~pairs.is_tie & (pairs.score_0 != pairs.score_1)

    agreement = float(pairs.orders_agree[decided].mean()) if decided.any() else float("nan")
    report = {
        "reward_model": rewards.model,
        "reward_model_id": smoothing["model_id"].iloc[0],
        "pairs": len(pairs),
        "bounds": {"method": b.method, "low": low, "high": high},
        "tau": rewards.tau, "gamma": rewards.gamma,
        "reward_label_agreement": round(agreement, 4),
        "non_tie_pairs_compared": int(decided.sum()),
        "p": {"mean": round(float(pairs.p.mean()), 5)} | _quantiles(pairs.p),
        "margin": {"mean": round(float(pairs.margin.mean()), 5)} | _quantiles(pairs.margin),
        "scores": {"mean": round(float(smoothing.score.mean()), 5), "std": round(float(smoothing.score.std()), 5)},
    }
    reference = None
    if rewards.reference is not None:
        reference = _against_reference(pairs, reward_scores[reward_scores.role == "reference"], rewards, decided)
        report["reference"] = reference["report"]
        # SmPO can smooth with the reference instead (train.smoothing_by: reference): its values
        # in the table's orientation, p < ½ where it prefers the other image (smoothing.by_reference).
        pairs["reference_p"], pairs["reference_margin"] = reference["p"], reference["margin"]
        pairs["reference_r_w"], pairs["reference_r_l"] = reference["r_w"], reference["r_l"]
        log.info("Rewards: the smoothing reward orders %.1f%% of pairs as %s does; %s agrees with the labels on %.1f%%",
                 100 * reference["report"]["order_agreement"], rewards.reference.model, rewards.reference.model,
                 100 * reference["report"]["reward_label_agreement"])
    log.info("Rewards: the reward's order agrees with the human labels on %.1f%% of %d non-tie pairs; median p %.3f",
             100 * agreement, int(decided.sum()), report["p"]["q50"])
    return pairs, report, _histogram(pairs, report, reference)


def _against_reference(pairs, scores, rewards: RewardsParams, decided) -> dict:
    """The reference reward model (the embedded world's shapes-oracle) on the same pairs, in the
    smoothing reward's orientation: whether it orders each pair alike, how its order agrees with
    the labels, and the p and SmPO weight it would give each pair."""
    from smpo_pipeline.smoothing import preference_probability, smpo_weight

    ref = rewards.reference
    s0, s1, r0, r1, (low, high) = _normalised_scores(pairs, scores, ref.bounds)
    first = pairs.reward_winner.to_numpy() == 0
    r_w, r_l = np.where(first, r0, r1), np.where(first, r1, r0)
    p = preference_probability(r_w, r_l, rewards.tau)  # < ½ where the reference prefers the other image
    weight = smpo_weight(p, rewards.gamma)
    margin_ref = np.where(first, s0 - s1, s1 - s0)
    label_first = pairs.label_0.to_numpy() > pairs.label_1.to_numpy()
    decided = decided.to_numpy() & (s0 != s1)
    report = {
        "model": ref.model, "model_id": scores["model_id"].iloc[0], "bounds": {"method": ref.bounds.method,
                                                                              "low": low, "high": high},
        "order_agreement": round(float((margin_ref > 0).mean()), 4),
        "reward_label_agreement": round(float(((s0 > s1) == label_first)[decided].mean()), 4),
        "margin_correlation": round(float(np.corrcoef(pairs.margin, margin_ref)[0, 1]), 4),
        "p": {"mean": round(float(p.mean()), 5)} | _quantiles(p),
        "smpo_weight": {"mean": round(float(weight.mean()), 5)} | _quantiles(weight),
    }
    return {"report": report, "p": p, "weight": weight, "margin": margin_ref, "r_w": r_w, "r_l": r_l}


def _histogram(pairs, report, reference: dict | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if reference is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    left, right = axes[0], axes[1]
    left.hist(pairs.p, bins=40, color="#4C72B0", alpha=0.7, label=report["reward_model"])
    if reference is not None:
        left.hist(reference["p"], bins=40, color="#DD8452", alpha=0.5, label=reference["report"]["model"])
        left.legend(fontsize=8)
    left.axvline(0.5, color="grey", lw=1, ls="--")
    left.set(title=f"smoothed preference p (τ={report['tau']:g})", xlabel="p = σ((r'_w − r'_l)/τ), the smoothing reward's order",
             ylabel="pairs")
    agree = pairs.orders_agree
    right.hist([pairs.margin[agree], pairs.margin[~agree]], bins=40, stacked=True,
               label=["reward order = human label", "disagree or tie"], color=["#55A868", "#C44E52"])
    right.set(title=f"reward margin ({report['reward_model']})", xlabel="s_w − s_l", ylabel="pairs")
    right.legend(fontsize=8)
    if reference is not None:
        axes[2].hist([pairs.smpo_weight, reference["weight"]], bins=40, label=[report["reward_model"],
                                                                              reference["report"]["model"]],
                     color=["#4C72B0", "#DD8452"])
        axes[2].axvline(0, color="grey", lw=1, ls="--")
        axes[2].set(title=f"SmPO weight γ(2p − 1), γ={report['gamma']:g}", xlabel="weight", ylabel="pairs")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig
