"""Nodes of the ``rewards`` pipeline: thin adapters over ``smpo_pipeline.rewards`` and
``smpo_pipeline.smoothing``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smpo_pipeline.params import DataParams, RewardsParams

log = logging.getLogger(__name__)


def score_pair_images(clean_pairs, rewards: RewardsParams, data: DataParams):
    """Both images of every clean pair, scored against the pair's caption. Scores already on disk
    for this reward model are reused; a killed run resumes where it stopped."""
    import pandas as pd

    from smpo_pipeline.rewards import build_reward_model
    from smpo_pipeline.rewards.cache import ScoreCache, caption_key, score_missing

    model = build_reward_model(rewards.model, **rewards.model_options)
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


def smooth_preferences(clean_pairs, reward_scores, rewards: RewardsParams):
    """Per pair: both orders (reward, human label) and whether they agree; the pair oriented by the
    reward (SmPO's winner), its normalised rewards, the smoothed probability p and the SmPO weight
    γ(2p − 1). Training re-orients it per objective (``train.pair_order``, ``smoothing.orient_pairs``)."""

    from smpo_pipeline.smoothing import normalise, preference_probability, quantile_bounds, smpo_weight

    lookup = {(u, c): s for u, c, s in reward_scores[["image_uid", "caption", "score"]].itertuples(index=False)}
    pairs = clean_pairs.copy()
    pairs["score_0"] = [lookup[u, c] for u, c in zip(pairs.image_0_uid, pairs.caption, strict=True)]
    pairs["score_1"] = [lookup[u, c] for u, c in zip(pairs.image_1_uid, pairs.caption, strict=True)]

    b = rewards.bounds
    low, high = (b.low, b.high) if b.method == "fixed" else quantile_bounds(
        reward_scores["score"], b.lower_quantile, b.upper_quantile)
    r0, r1 = normalise(pairs.score_0, low, high), normalise(pairs.score_1, low, high)

    reward_first = pairs.score_0 >= pairs.score_1  # SmPO: the higher-scored image wins
    label_first = pairs.label_0 > pairs.label_1
    decided = ~pairs.is_tie & (pairs.score_0 != pairs.score_1)
    pairs["reward_winner"] = np.where(reward_first, 0, 1)
    pairs["label_winner"] = np.where(pairs.is_tie, -1, np.where(label_first, 0, 1))
    pairs["orders_agree"] = decided & (pairs.reward_winner == pairs.label_winner)

    # The table's orientation is the reward's; training re-orients it per objective (orient_pairs).
    pairs["winner"] = pairs["reward_winner"]
    pairs["image_w_uid"] = np.where(reward_first, pairs.image_0_uid, pairs.image_1_uid)
    pairs["image_l_uid"] = np.where(reward_first, pairs.image_1_uid, pairs.image_0_uid)
    pairs["image_w_file"] = np.where(reward_first, pairs.image_0_file, pairs.image_1_file)
    pairs["image_l_file"] = np.where(reward_first, pairs.image_1_file, pairs.image_0_file)
    pairs["r_w"] = np.where(reward_first, r0, r1)
    pairs["r_l"] = np.where(reward_first, r1, r0)
    pairs["margin"] = np.where(reward_first, pairs.score_0 - pairs.score_1, pairs.score_1 - pairs.score_0)
    pairs["p"] = preference_probability(pairs.r_w, pairs.r_l, rewards.tau)
    pairs["smpo_weight"] = smpo_weight(pairs.p, rewards.gamma)

    agreement = float(pairs.orders_agree[decided].mean()) if decided.any() else float("nan")
    q = lambda x: {f"q{int(k * 100):02d}": round(float(np.quantile(x, k)), 5) for k in (0.05, 0.25, 0.5, 0.75, 0.95)}  # noqa: E731
    report = {
        "reward_model": rewards.model,
        "reward_model_id": reward_scores["model_id"].iloc[0],
        "pairs": len(pairs),
        "bounds": {"method": b.method, "low": low, "high": high},
        "tau": rewards.tau, "gamma": rewards.gamma,
        "reward_label_agreement": round(agreement, 4),
        "non_tie_pairs_compared": int(decided.sum()),
        "p": {"mean": round(float(pairs.p.mean()), 5)} | q(pairs.p),
        "margin": {"mean": round(float(pairs.margin.mean()), 5)} | q(pairs.margin),
        "scores": {"mean": round(float(reward_scores.score.mean()), 5), "std": round(float(reward_scores.score.std()), 5)},
    }
    log.info("Rewards: the reward's order agrees with the human labels on %.1f%% of %d non-tie pairs; median p %.3f",
             100 * agreement, int(decided.sum()), report["p"]["q50"])
    return pairs, report, _histogram(pairs, report)


def _histogram(pairs, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist(pairs.p, bins=40, color="#4C72B0")
    left.axvline(0.5, color="grey", lw=1, ls="--")
    left.set(title=f"smoothed preference p (τ={report['tau']:g})", xlabel="p = σ((r'_w − r'_l)/τ)", ylabel="pairs")
    agree = pairs.orders_agree
    right.hist([pairs.margin[agree], pairs.margin[~agree]], bins=40, stacked=True,
               label=["reward order = human label", "disagree or tie"], color=["#55A868", "#C44E52"])
    right.set(title=f"reward margin ({report['reward_model']})", xlabel="s_w − s_l", ylabel="pairs")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
