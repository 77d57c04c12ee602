"""SmPO's smoothed preference probability, as pure functions (numpy in, numpy out).

Formulas and constants: ``docs/objectives.md`` (SmPO section).

- normalised reward        r' = (s − low) / (high − low)
  (PickScore's published bounds: low 0.11543526500463486, high 0.28201571106910706)
- smoothed probability     p = σ((r'_w − r'_l) / τ);  τ = 1 is the official
                           exp(r'_w) / (exp(r'_w) + exp(r'_l))
- SmPO weight of the pair  γ (2p − 1);  γ = 10 in the official code. p = 0.5 gives no gradient,
                           and γ(2p − 1) ≡ 1 turns the SmPO loss into DPO's.
- pair order               SmPO's winner is the reward's (the human label only drops ties);
                           Diffusion-DPO's is the human label's. ``orient_pairs`` turns one into the other.
"""

from __future__ import annotations

import numpy as np

PICKSCORE_LOW = 0.11543526500463486
PICKSCORE_HIGH = 0.28201571106910706


def normalise(scores, low: float, high: float) -> np.ndarray:
    if not high > low:
        raise ValueError(f"normalisation bounds need high > low (got low={low}, high={high})")
    return (np.asarray(scores, dtype=np.float64) - low) / (high - low)


def quantile_bounds(scores, lower: float = 0.01, upper: float = 0.99) -> tuple[float, float]:
    """Bounds from the dataset's own score distribution, for reward models without published ones."""
    low, high = np.quantile(np.asarray(scores, dtype=np.float64), [lower, upper])
    if not high > low:
        raise ValueError(f"degenerate score distribution: quantiles {lower}/{upper} are both {low}")
    return float(low), float(high)


def score_bounds(scores, method: str, low: float, high: float, lower_quantile: float, upper_quantile: float):
    """(low, high) of ``normalise``: fixed (a reward model's published bounds) or ``quantile``
    (of ``scores``, this dataset's, for reward models without published ones)."""
    if method == "fixed":
        return low, high
    return quantile_bounds(scores, lower_quantile, upper_quantile)


def preference_probability(r_w, r_l, tau: float = 1.0) -> np.ndarray:
    """p = σ((r'_w − r'_l) / τ), computed stably for any margin."""
    if not tau > 0:
        raise ValueError(f"temperature tau must be > 0 (got {tau})")
    z = (np.asarray(r_w, dtype=np.float64) - np.asarray(r_l, dtype=np.float64)) / tau
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def reward_oriented_pairs(pairs, score_0, score_1, r_0, r_1, tau: float = 1.0, gamma: float = 10.0):
    """The labelled pairs (``label_0``, ``label_1``, ``is_tie``, ``image_{0,1}_{uid,file}``) with a
    reward model's raw scores ``score_{0,1}`` and normalised rewards ``r_{0,1}``, oriented by the
    reward (SmPO's winner: the higher-scored image): both orders (``reward_winner``,
    ``label_winner``, −1 for a tie) and whether they agree, the w/l columns, the margin, p and
    the SmPO weight. Training re-orients the table per objective (``orient_pairs``)."""
    out = pairs.copy()
    out["score_0"], out["score_1"] = np.asarray(score_0), np.asarray(score_1)
    reward_first = (out.score_0 >= out.score_1).to_numpy()
    decided = ~out.is_tie & (out.score_0 != out.score_1)
    out["reward_winner"] = np.where(reward_first, 0, 1)
    out["label_winner"] = np.where(out.is_tie, -1, np.where(out.label_0 > out.label_1, 0, 1))
    out["orders_agree"] = decided & (out.reward_winner == out.label_winner)
    out["winner"] = out["reward_winner"]
    for side in ("uid", "file"):
        out[f"image_w_{side}"] = np.where(reward_first, out[f"image_0_{side}"], out[f"image_1_{side}"])
        out[f"image_l_{side}"] = np.where(reward_first, out[f"image_1_{side}"], out[f"image_0_{side}"])
    out["r_w"], out["r_l"] = np.where(reward_first, r_0, r_1), np.where(reward_first, r_1, r_0)
    out["margin"] = np.where(reward_first, out.score_0 - out.score_1, out.score_1 - out.score_0)
    out["p"] = preference_probability(out.r_w, out.r_l, tau)
    out["smpo_weight"] = smpo_weight(out.p, gamma)
    return out


def _flip(pairs, flip, target):
    """``pairs`` with the rows of ``flip`` turned around: w/l columns swapped, margin and SmPO weight
    negated, p → 1 − p, the winner set to ``target``."""
    out = pairs.copy()
    for won, lost in (("image_w_uid", "image_l_uid"), ("image_w_file", "image_l_file"), ("r_w", "r_l")):
        out.loc[flip, [won, lost]] = pairs.loc[flip, [lost, won]].to_numpy()
    out.loc[flip, "winner"] = target[flip]
    out.loc[flip, "margin"] = -pairs.margin[flip]
    out.loc[flip, "p"] = 1.0 - pairs.p[flip]
    out.loc[flip, "smpo_weight"] = -pairs.smpo_weight[flip]
    return out


def orient_pairs(pairs, order: str):
    """The pair table (``pipelines/rewards``: ordered by the reward, with ``label_winner``) with the
    winner chosen by ``order``: ``reward`` (SmPO's choice) or ``label`` (Diffusion-DPO's: the
    annotators' choice). A re-oriented pair swaps its w/l columns, negates its margin and takes
    p → 1 − p, so p stays the smoothed probability *of the chosen order* and a pair the reward
    disagrees with gets a negative SmPO weight. Pairs without a label winner (ties) keep the
    reward's order."""
    if order not in ("reward", "label"):
        raise ValueError(f"pair order must be 'reward' or 'label' (got {order!r})")
    target = pairs.reward_winner if order == "reward" else pairs.label_winner.where(pairs.label_winner >= 0,
                                                                                 pairs.reward_winner)
    flip = (target != pairs.winner).to_numpy()
    return _flip(pairs, flip, target) if flip.any() else pairs


def by_reference(pairs, gamma: float = 10.0):
    """The pair table as if the *reference* reward model had scored it (``rewards.reference``; on the
    embedded world the shapes-oracle): its normalised rewards, margin, p and SmPO weight, and its
    winner as ``reward_winner``, so that ``orient_pairs(…, "reward")`` orders by it. The table must
    be in the reward's orientation, as ``pipelines/rewards`` writes it."""
    missing = [c for c in ("reference_p", "reference_margin", "reference_r_w", "reference_r_l") if c not in pairs]
    if missing:
        raise KeyError(f"the pair table has no reference scores ({missing}): set rewards.reference and re-run rewards")
    if not (pairs.winner == pairs.reward_winner).all():
        raise ValueError("by_reference needs the table in the reward's orientation (before orient_pairs)")
    out = pairs.assign(p=pairs.reference_p, margin=pairs.reference_margin, r_w=pairs.reference_r_w,
                       r_l=pairs.reference_r_l, smpo_weight=smpo_weight(pairs.reference_p, gamma))
    flip = (out.p < 0.5).to_numpy()
    other = 1 - out.reward_winner
    out = _flip(out, flip, other)
    out.loc[flip, "reward_winner"] = other[flip]
    return out


def training_pairs(pairs, order: str, smoothing_by: str = "reward_model", gamma: float = 10.0):
    """The train split of the pair table as a run reads it: smoothed by the reward model
    (``reward_model``) or by the reference (``reference``, ``by_reference``), then oriented by
    ``order`` (``orient_pairs``)."""
    if smoothing_by not in ("reward_model", "reference"):
        raise ValueError(f"smoothing_by must be 'reward_model' or 'reference' (got {smoothing_by!r})")
    train = pairs[pairs.split == "train"]
    if smoothing_by == "reference":
        train = by_reference(train, gamma)
    return orient_pairs(train, order).reset_index(drop=True)


def smpo_weight(p, gamma: float = 10.0) -> np.ndarray:
    """γ (2p − 1): the factor SmPO puts inside the DPO sigmoid."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (got {gamma})")
    return gamma * (2.0 * np.asarray(p, dtype=np.float64) - 1.0)
