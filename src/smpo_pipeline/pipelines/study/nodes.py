"""Nodes of the ``study`` pipeline: thin adapters over ``smpo_pipeline.world.disagreement``."""

from __future__ import annotations

import logging
from pathlib import Path

from smpo_pipeline.params import DataParams, StudyParams

log = logging.getLogger(__name__)


def relabel_at_each_level(clean_pairs, study: StudyParams, data: DataParams):
    """Every clean pair (both splits) judged again at each level of ``study.levels`` by that
    level's annotators: (the labels, one row per pair and level; a report of each level's measured
    agreement with the shapes-oracle and with the shipped labels). The images and the pairs are the
    chain's own; only who judges them changes."""
    import numpy as np
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
    for index, d in enumerate(study.levels):
        population = axis.population(d, study.population_seed)
        rng = np.random.default_rng([study.labelling_seed, index])
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
