"""How far a preference objective can move the shipped base by reweighting its own samples toward
what the labels reward (docs/regime.md, round 16).

Diffusion-DPO minimises the Bradley–Terry loss of the policy's implicit reward
β·log π(x|c)/π_ref(x|c) on the labelled pairs (Rafailov et al. 2023, eq. 7; Wallace et al. 2024 for
the diffusion form). Its minimiser is π*(x|c) ∝ π_ref(x|c)·exp(r(x, c)/β) (Rafailov et al., eq. 4),
where r is the Bradley–Terry reward that best explains the labels: the policy tilts its own distribution toward
what the annotators reward, the more the smaller β is. It cannot draw what the base never draws.
This measures, without training:

1. the shapes-oracle reads both images of every decided pair of the shards (``data/01_raw/pickapic``)
   and scores each of its five attributes against the caption;
2. a Bradley–Terry model r(x, c) = Σ_a w_a·score_a(x, c) is fitted to the labels by maximum
   likelihood: what the annotators reward, in nats of their odds;
3. each training prompt's candidates (the base model's own samples, which the pairs are made of) are
   reweighted by exp(k·r), self-normalised per prompt, for tilts k = 1/β (in the units of r): the
   expected oracle reward, the attribute accuracies and the KL divergence from the base of each
   tilted policy, and the limit, the best of the n candidates by the oracle.

With n candidates a prompt the estimate cannot leave their span: it says how much room lies in the
base's own variety, which is all a preference objective reweights. About 1 min:

    .venv/bin/python benchmarks/preference_ceiling.py
    .venv/bin/python benchmarks/preference_ceiling.py --tilts 1 2 4 8
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

SHARDS = Path("data/01_raw/pickapic")


def read(jpeg: bytes, caption: str) -> tuple[dict[str, float], dict[str, bool]]:
    """The oracle's five attribute scores of an image for its caption, and which attributes are right."""
    from PIL import Image

    from smpo_pipeline.world.grammar import parse_prompt
    from smpo_pipeline.world.oracle import read_image, score_reading

    reading, comp = read_image(Image.open(io.BytesIO(jpeg)).convert("RGB")), parse_prompt(caption)
    return score_reading(reading, comp), reading.right(comp)


def fit_bradley_terry(diff: np.ndarray, won: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Maximum-likelihood weights w of P(image 0 ≻ image 1) = σ(w · (x_0 − x_1)) by Newton's method
    (no intercept: which image is shown first carries no preference)."""
    w = np.zeros(diff.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-diff @ w))
        gradient = diff.T @ (won - p)
        hessian = (diff * (p * (1 - p))[:, None]).T @ diff + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return w


def main() -> None:
    import pandas as pd
    from tqdm import tqdm

    from smpo_pipeline.world.oracle import ATTRIBUTES, ORACLE_WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=SHARDS, help=f"a directory of parquet shards (default {SHARDS})")
    parser.add_argument("--tilts", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0],
                        help="reweight each prompt's candidates by exp(k·r) for these k (default 1 2 4 8)")
    args = parser.parse_args()
    shards = sorted(args.shards.glob("*.parquet"))
    if not shards:
        raise SystemExit(f"no *.parquet shards under {args.shards}")
    pairs = pd.concat([pd.read_parquet(f) for f in shards], ignore_index=True)

    images: dict[str, dict] = {}  # uid → caption, scores, right attributes
    for rec in tqdm(pairs.itertuples(index=False), total=len(pairs), desc="oracle reads images"):
        for uid, jpeg in ((rec.image_0_uid, rec.jpg_0), (rec.image_1_uid, rec.jpg_1)):
            if uid not in images:
                scores, right = read(jpeg, rec.caption)
                images[uid] = {"caption": rec.caption, "scores": scores, "right": right}

    decided = pairs[pairs.label_0 != 0.5]
    features = lambda uid: np.array([images[uid]["scores"][a] for a in ATTRIBUTES])  # noqa: E731
    diff = np.stack([features(a) - features(b) for a, b in zip(decided.image_0_uid, decided.image_1_uid, strict=True)])
    w = fit_bradley_terry(diff, (decided.label_0 == 1).to_numpy(float))
    fitted = 1 / (1 + np.exp(-diff @ w))
    print(f"{len(pairs)} pairs ({len(decided)} decided) of {len(images)} images, "
          f"{pairs.caption.nunique()} prompts\n")
    print("Bradley–Terry reward the labels imply, r = Σ w_a · score_a (nats per unit score):")
    for a, wa in zip(ATTRIBUTES, w, strict=True):
        print(f"  {a:11s} w = {wa:6.2f}   (the oracle's own weight {ORACLE_WEIGHTS[a]:.2f})")
    print(f"  the fitted model agrees with {((fitted > 0.5) == (decided.label_0 == 1)).mean():.1%} of the labels\n")

    table = pd.DataFrame([{"caption": v["caption"], "r": features(u) @ w,
                           "oracle": sum(ORACLE_WEIGHTS[a] * v["scores"][a] for a in ATTRIBUTES),
                           **{a: float(v["right"][a]) for a in ATTRIBUTES}} for u, v in images.items()])
    n = table.groupby("caption").size()
    print(f"candidates per prompt: {n.min()}–{n.max()}\n")

    def policy(weight: np.ndarray) -> dict[str, float]:
        t = table.assign(weight=weight)
        t["weight"] /= t.groupby("caption").weight.transform("sum")
        columns = ["oracle", *ATTRIBUTES]
        out = (t[columns].mul(t.weight, axis=0).groupby(t.caption).sum()).mean().to_dict()
        size = t.groupby("caption").weight.transform("size")  # KL(π ‖ uniform over the candidates)
        kl = (t.weight * np.log(np.where(t.weight > 0, t.weight * size, 1.0))).groupby(t.caption).sum()
        return out | {"kl": float(kl.mean())}

    rows = {"base (its own samples)": policy(np.ones(len(table)))}
    for k in args.tilts:
        shifted = (table.r - table.groupby("caption").r.transform("max")) * k  # a stable exp
        rows[f"tilted by exp({k:g}·r)"] = policy(np.exp(shifted.to_numpy()))
    best = (table.oracle == table.groupby("caption").oracle.transform("max")).to_numpy(float)
    rows[f"best of {n.max()} by the oracle"] = policy(best)
    base = rows["base (its own samples)"]["oracle"]
    print(f"{'policy':28s} {'reward':>7s} {'gain':>7s} {'KL':>6s} " + " ".join(f"{a:>10s}" for a in ATTRIBUTES))
    for name, r in rows.items():
        print(f"{name:28s} {r['oracle']:7.3f} {r['oracle'] - base:+7.3f} {r['kl']:6.2f} "
              + " ".join(f"{r[a]:10.1%}" for a in ATTRIBUTES))


if __name__ == "__main__":
    main()
