"""The ``reward_model`` pipeline through Kedro's session and runner, after ``data``, then
``rewards`` smoothing with what it learned, on shards of annotator-labelled pairs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smpo_pipeline import smoothing
from tests.conftest import REDUCED, make_kedro_project, run_kedro
from tests.pickapic_factory import annotated_rows, write_shard


@pytest.fixture(scope="module")
def learned(tmp_path_factory, grammar_tokenizer):
    """(project, its reduced reward_model parameters) after data → reward_model → rewards."""
    project = make_kedro_project(tmp_path_factory.mktemp("tmp") / "project")
    grammar_tokenizer.save_pretrained(project / "tokenizer")  # no base model here: its tokenizer alone
    small = {"reward_model": REDUCED["reward_model"] | {"tokenizer": str(project / "tokenizer")}}
    for s in range(2):
        write_shard(project / f"data/01_raw/pickapic/shard-{s}.parquet", annotated_rows(60, seed=s))
    run_kedro(project, ["data", "reward_model", "rewards"], small)
    return project, small


def test_the_learned_model_is_measured_against_the_held_out_labels_and_the_oracle(learned):
    learned_project, _ = learned
    report = json.loads((learned_project / "reports/reward_model.json").read_text())
    assert report["trained"] and report["reuse"] == "new" and report["steps_run_now"] == 20
    pairs = pd.read_parquet(learned_project / "data/02_intermediate/pairs.parquet")
    assert report["train_pairs"] == (pairs.split == "train").sum()
    assert report["held_out_pairs"] == (pairs.split == "validation").sum() > 0
    agreement = report["label_agreement"]
    assert 0 <= agreement["low"] <= agreement["share"] <= agreement["high"] <= 1
    assert report["reference"]["model"] == "shapes-oracle"
    assert 0.5 < report["reference"]["label_agreement"]["share"] <= 1  # the oracle is the annotators' basis
    assert {"log_loss", "brier", "ece", "bins"} <= set(report["calibration"])
    assert (learned_project / "reports/figures/reward_model.png").stat().st_size > 10_000
    # a stock CLIPModel + CLIPProcessor directory
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (learned_project / "data/06_models/reward_model").iterdir()}


def test_rewards_smooth_with_the_learned_model_and_report_the_oracle_beside_it(learned):
    learned_project, _ = learned
    report = json.loads((learned_project / "reports/rewards.json").read_text())
    assert report["reward_model"] == "pickscore" and report["bounds"]["method"] == "quantile"
    ref = report["reference"]
    assert ref["model"] == "shapes-oracle" and 0 <= ref["order_agreement"] <= 1
    assert set(ref["p"]) >= {"mean", "q50"} and set(ref["smpo_weight"]) >= {"mean", "q50"}
    pairs = pd.read_parquet(learned_project / "data/04_feature/preference_pairs.parquet")
    learned = np.where(pairs.winner == 0, pairs.score_0, pairs.score_1) >= np.where(pairs.winner == 0, pairs.score_1,
                                                                                  pairs.score_0)
    assert learned.all()  # the table is in the learned model's order
    # SmPO smoothed by the reference instead: the oracle's order and p, every p ≥ ½ in its own order
    by_oracle = smoothing.training_pairs(pairs, "reward", "reference")
    assert (by_oracle.p >= 0.5).all() and len(by_oracle) == (pairs.split == "train").sum()
    flipped = pairs[pairs.split == "train"].reference_p.lt(0.5).sum()
    assert flipped == (by_oracle.image_w_uid.to_numpy() != pairs[pairs.split == "train"].image_w_uid.to_numpy()).sum()


def test_a_second_run_trains_nothing_and_a_changed_setting_retrains_and_rescores(learned):
    learned_project, small = learned
    scores = pd.read_parquet(learned_project / "data/03_primary/reward_scores.parquet")
    run_kedro(learned_project, ["reward_model", "rewards"], small)
    again = json.loads((learned_project / "data/06_models/reward_model_training.json").read_text())
    assert again["reuse"] == "finished" and again["steps_run_now"] == 0
    assert pd.read_parquet(learned_project / "data/03_primary/reward_scores.parquet").equals(scores)
    seed = {"reward_model": small["reward_model"] | {"training": small["reward_model"]["training"] | {"seed": 1}}}
    run_kedro(learned_project, ["reward_model", "rewards"], seed)
    new = json.loads((learned_project / "data/06_models/reward_model_training.json").read_text())
    assert new["reuse"] == "new" and new["run_id"] != again["run_id"]
    rescored = pd.read_parquet(learned_project / "data/03_primary/reward_scores.parquet")
    smoothing_ids = lambda frame: set(frame[frame.role == "smoothing"].model_id)  # noqa: E731
    assert smoothing_ids(rescored) != smoothing_ids(scores)  # a retrained model's scores are new scores
