"""The disagreement study's grid (``pipelines/study``): at each level of annotator disagreement, a
reward model learned from that level's labels, the level's pair tables, and one training cell per
(level, arm, seed), each measured on the test prompts and on held-out pairs.

An **arm** is an objective with the scores that order and smooth its pairs:

- ``dpo``: Diffusion-DPO on the level's labels (its winner is the annotators'; p is unused);
- ``smpo-learned``: SmPO smoothed by the reward model learned from the level's labels, as the
  ``reward_model`` pipeline learns one from the shipped labels (the realistic SmPO);
- ``smpo-oracle``: SmPO smoothed by the shapes-oracle (a perfect reward model: the labels then
  only decide which pairs are ties, and ties are dropped as the data pipeline drops them).

A cell's **record** (its test-prompt rewards, its held-out agreement, its training time) is kept
under a key of everything it depends on: the training run's key (``keys.run_description``: the
settings, the base weights, every value of the pairs it reads, the training code) and how it is
measured. A killed study started again finds the records it finished and resumes the cell it was
training from that run's latest checkpoint; a wider grid trains only its new cells.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from smpo_pipeline.params import CacheParams, RewardModelParams, StudyParams, TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    objective: str  # dpo | smpo
    order: str  # whose winner the run learns: label (the annotators') | reward (the scoring reward's)
    scored_by: str  # which scores fill the pair table's p: learned | oracle


ARMS = {"dpo": Arm("dpo", "label", "oracle"), "smpo-learned": Arm("smpo", "reward", "learned"),
        "smpo-oracle": Arm("smpo", "reward", "oracle")}


@dataclass(frozen=True)
class Cell:
    level: float
    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm} at d={self.level:g} (seed {self.seed})"


def grid(study: StudyParams) -> list[Cell]:
    """Every cell, seed by seed: a study stopped part-way has every (level, arm) of its first seeds."""
    return [Cell(level, arm, seed) for seed in study.seeds for level in study.levels for arm in study.arms]


def pairs_at_level(clean_pairs, study_labels, level: float, drop_ties: bool = True):
    """The clean pairs with the labels of one level; the pairs that level ties are dropped when the
    data pipeline drops ties (``data.drop_ties``), as it drops the shipped ones."""
    at = study_labels[study_labels.level == level].set_index("pair_id")
    missing = set(clean_pairs.pair_id) - set(at.index)
    if missing:
        raise ValueError(f"study_labels has no labels at level {level} for {len(missing)} clean pairs "
                         f"(e.g. {sorted(missing)[:3]}): re-run `kedro run --pipelines study`")
    out = clean_pairs.copy()
    for column in ("label_0", "label_1", "is_tie"):
        out[column] = out.pair_id.map(at[column]).to_numpy()
    return (out[~out.is_tie] if drop_ties else out).reset_index(drop=True)


def level_reward_model(pairs, images: dict, reward_model: RewardModelParams, training, checkpoint_root: Path) -> dict:
    """A PickScore-style reward model learned from the train split of one level's ``pairs``
    (``rewards.pickscore_training``, the ``reward_model`` pipeline's recipe with ``training``), its
    raw scores of both images of every pair, and its held-out agreement with the level's labels
    and with the oracle. Its checkpoints (every ``reward_model.checkpoint_every`` steps) live under its
    run id: a finished one is reused, a killed one resumes."""
    from smpo_pipeline.rewards.pickscore_training import (
        image_scores,
        initial_scorer,
        pair_tensors,
        scorer_run_id,
        train_scorer,
    )

    settings = reward_model.model_copy(update={"training": training})
    model, processor = initial_scorer(settings)
    tensor = lambda rows: pair_tensors(processor, [images[u] for u in rows.image_0_uid],  # noqa: E731
                                       [images[u] for u in rows.image_1_uid], rows.caption, rows.label_0,
                                       settings.size.max_length)
    train = pairs[pairs.split == "train"].reset_index(drop=True)
    tensors = tensor(train)
    run_id = scorer_run_id(tensors, model, training)
    model, _ = train_scorer(model, tensors, training, checkpoint_root / run_id, reward_model.checkpoint_every,
                            progress=False)
    s0, s1 = image_scores(model, tensor(pairs))
    return {"run_id": run_id, "score_0": s0, "score_1": s1}


def held_out_agreement(pairs, score_0, score_1, oracle_0, oracle_1) -> dict:
    """On the validation split: how often a reward model orders a pair as the labels do (ties left
    out) and as the oracle does (pairs it scores alike left out)."""
    val = (pairs.split == "validation").to_numpy()
    margin, label = (score_0 - score_1)[val], pairs.label_0.to_numpy()[val]
    oracle = (oracle_0 - oracle_1)[val]
    decided, ordered = label != 0.5, oracle != 0
    return {"heldout_pairs": int(val.sum()),
            "label_agreement": round(float(((margin > 0) == (label > 0.5))[decided].mean()), 4),
            "oracle_agreement": round(float(((margin > 0) == (oracle > 0))[ordered].mean()), 4)}


def cell_train_params(arm: Arm, train: TrainParams) -> TrainParams:
    """The study's train section for one arm: its objective's pairs ordered by the arm's order, p
    read from the table as the arm scored it."""
    return train.model_copy(update={"pair_order": train.pair_order | {arm.objective: arm.order},
                                    "smoothing_by": "reward_model", "objectives": [arm.objective]})


def prepare_run(arm: Arm, table, seed: int, base_model, cache_report: dict, train: TrainParams, cache: CacheParams,
                checkpoint_root: Path) -> dict:
    """One cell's training run, set up as the ``train`` pipeline sets one up (``training.runs``):
    its inputs, config and key (``keys.run_key``), and its checkpoint directory under that key."""
    from dataclasses import replace

    from smpo_pipeline.keys import run_description, run_key
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.runs import run_inputs, train_config

    params = cell_train_params(arm, train)
    run = run_inputs(arm.objective, table, base_model, cache_report, params, cache)
    config = replace(train_config(arm.objective, params, run["noise"], seed), evaluate_every=0)  # measured after
    description = run_description(config, run["prints"], run["pairs"], CachedPairs.COLUMNS,
                                  inversion=asdict(run["inversion"]) if run["noise"] == "cached" else None)
    run_id = run_key(description)
    config = replace(config, checkpoint_dir=str(checkpoint_root / arm.objective / run_id),
                     checkpoint_every=train.checkpoint_every, keep_last=1)
    return run | {"config": config, "run_id": run_id}


def train_run(run: dict, base_model) -> tuple[object, float]:
    """(the trained UNet, seconds of training): from the run's latest checkpoint if it has one."""
    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.training.trainer import train_preference

    seconds = []
    policy = train_preference(copy.deepcopy(base_model.unet), run["data"], run["config"], run["inversion"],
                              noise_schedule(base_model), lambda step, record: seconds.append(record["step_time"]),
                              run["experts"])
    return policy, float(sum(seconds))


class CellRecords:
    """Each finished cell's record as ``<root>/<key>.json``, written whole (a temporary file
    renamed), so a study killed at any moment leaves only finished records."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, record: dict) -> None:
        tmp = self.root / f".{key}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.root / f"{key}.json")


def finish_cell(records: CellRecords, key: str, record: dict, checkpoint_dir: str) -> None:
    """Keep the cell's record, then drop its training checkpoints: the record is what the study
    reuses, and a UNet with its optimizer state per cell would fill the disk."""
    records.put(key, record)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


class Measure:
    """How every model of the study is measured, the same way for all: the mean shapes-oracle
    reward of its images of the test prompts (the evaluation's protocol and seed rule) and its
    implicit agreement with the oracle on the held-out pairs (``evaluation.HeldOutDraws``)."""

    def __init__(self, prompts: list[str], seeds: list[int], protocol, batch_size: int, heldout, draws: int,
                 alphas_cumprod, timestep_range, reference_unet, prediction_type: str = "epsilon") -> None:
        from smpo_pipeline.evaluation import HeldOutDraws
        from smpo_pipeline.keys import digest, frame_digest

        self.prompts, self.seeds, self.protocol, self.batch_size = prompts, seeds, protocol, batch_size
        self.heldout = HeldOutDraws(heldout, draws, alphas_cumprod, timestep_range, reference_unet,
                                    prediction_type=prediction_type)
        self.key = digest(prompts, seeds, protocol.__dict__,
                          frame_digest(heldout.pairs, ["image_w_uid", "image_l_uid", "caption"]), draws,
                          tuple(timestep_range), code_digest_of_measures(), length=16)

    def __call__(self, base_model, unet) -> dict:
        from smpo_pipeline.evaluation import oracle_rewards

        pipe = type(base_model)(**{**base_model.components, "unet": unet})
        rewards = oracle_rewards(pipe, self.prompts, self.seeds, self.protocol, self.batch_size, progress=False)
        return {"test_rewards": [round(float(r), 6) for r in rewards],
                "heldout_agreement": [round(float(a), 4) for a in self.heldout.agreement(unet)]}


def code_digest_of_measures() -> str:
    """The code that samples and scores, and all it imports (a change re-measures every cell)."""
    from smpo_pipeline.keys import code_digest

    return code_digest("smpo_pipeline.evaluation")


def run_grid(study: StudyParams, tables: dict, measure: Measure, base_model, cache_report: dict, train: TrainParams,
             cache: CacheParams) -> dict:
    """Every cell of ``grid(study)``: its record when one is kept under its key, else trained and
    measured now (``tables[level][arm.scored_by]``: the level's pair table). Returns the base
    model's record, every cell's, and how many were trained now."""
    from tqdm.auto import tqdm

    from smpo_pipeline.keys import digest
    from smpo_pipeline.models.sampling import model_fingerprint

    records = CellRecords(Path(study.root))
    base_key = digest("base", model_fingerprint(base_model), measure.key, length=16)
    base = records.get(base_key)
    if base is None:
        base = {"model": "base"} | measure(base_model, base_model.unet)
        records.put(base_key, base)
    cells, trained = [], 0
    bar = tqdm(grid(study), desc="study cells", unit="cell")
    for cell in bar:
        bar.set_postfix_str(cell.name)
        arm = ARMS[cell.arm]
        run = prepare_run(arm, tables[cell.level][arm.scored_by], cell.seed, base_model, cache_report, train, cache,
                          Path(study.checkpoint_root))
        key = digest(run["run_id"], measure.key, length=16)
        record = records.get(key)
        if record is None:
            log.info("study: training %s (run %s)", cell.name, run["run_id"])
            unet, seconds = train_run(run, base_model)
            start = time.perf_counter()
            measured = measure(base_model, unet)
            record = asdict(cell) | {"run_id": run["run_id"], "pairs": len(run["pairs"]), "steps": run["config"].steps,
                                     "train_seconds": round(seconds, 1),
                                     "measure_seconds": round(time.perf_counter() - start, 1)} | measured
            finish_cell(records, key, record, run["config"].checkpoint_dir)
            trained += 1
        cells.append(record | {"key": key})
    log.info("study: %d cells, %d trained now, %d reused", len(cells), trained, len(cells) - trained)
    return {"base": base | {"key": base_key}, "cells": cells, "trained_now": trained, "reused": len(cells) - trained,
            "heldout_pairs": len(measure.heldout)}


def summarize_grid(grid_report: dict, levels: list[dict], study: StudyParams) -> dict:
    """Per level (its measured label agreement) and arm: the gain over the base in mean test
    reward and the held-out implicit agreement, each with a 95 % interval that resamples prompts
    (pairs) and training seeds (``evaluation.hierarchical_bootstrap``), and both against DPO's."""
    from smpo_pipeline.evaluation import hierarchical_bootstrap

    e = study.evaluation
    # The images of one prompt are not independent: the bootstrap resamples prompts (their mean).
    per_prompt = lambda rewards: np.asarray(rewards).reshape(*np.shape(rewards)[:-1], -1,  # noqa: E731
                                                             e.seeds_per_prompt).mean(axis=-1)
    images = np.asarray(grid_report["base"]["test_rewards"])
    base = per_prompt(images)
    by = {}
    for record in grid_report["cells"]:
        by.setdefault((record["level"], record["arm"]), []).append(record)
    interval = lambda values, seed: dict(zip(("estimate", "ci_low", "ci_high"),  # noqa: E731
                                             (round(v, 5) for v in hierarchical_bootstrap(
                                                 values, e.bootstrap_samples, 0.95, seed)), strict=True))
    rows = []
    for level in levels:
        row = {k: level[k] for k in ("level", "oracle_agreement", "tie_share") if k in level} | {"arms": {}}
        cells_of = {arm: sorted(by[level["level"], arm], key=lambda r: r["seed"])
                    for arm in study.arms if (level["level"], arm) in by}
        rewards = {arm: per_prompt([r["test_rewards"] for r in cells]) for arm, cells in cells_of.items()}
        for arm, values in rewards.items():
            cells = cells_of[arm]
            agreement = np.array([r["heldout_agreement"] for r in cells])
            trained = np.array([r["test_rewards"] for r in cells])
            wins = per_prompt(np.where(trained > images, 1.0, np.where(trained < images, 0.0, 0.5)))
            row["arms"][arm] = {
                "seeds": [r["seed"] for r in cells],
                "gain": interval((values - base)[:, None, :], 0),
                "win_rate": interval(wins[:, None, :], 0),
                "heldout_agreement": interval(agreement[:, None, :], 0),
                "train_seconds": round(float(np.mean([r["train_seconds"] for r in cells])), 1)}
            if arm != "dpo" and "dpo" in rewards:
                dpo_agreement = np.array([r["heldout_agreement"] for r in cells_of["dpo"]])
                row["arms"][arm]["gain_over_dpo"] = interval(values[:, None, :] - rewards["dpo"][None, :, :], 0)
                row["arms"][arm]["heldout_agreement_over_dpo"] = interval(
                    agreement[:, None, :] - dpo_agreement[None, :, :], 0)
        rows.append(row)
    # The estimates again as a flat mapping (level d as d000 … d100), which `dvc metrics show/diff` lists.
    metrics = {f"d{round(100 * row['level']):03d}": {arm: {name: v[name]["estimate"] for name in (
        "gain", "heldout_agreement", "gain_over_dpo", "heldout_agreement_over_dpo") if name in v}
        for arm, v in row["arms"].items()} for row in rows}
    return {"metrics": metrics, "arms": list(study.arms), "seeds": list(study.seeds), "test_images": len(images),
            "test_prompts": len(base),
            "heldout_pairs": grid_report.get("heldout_pairs"),
            "base_mean_reward": round(float(base.mean()), 5), "cells": len(grid_report["cells"]),
            "trained_now": grid_report["trained_now"], "levels": rows}
