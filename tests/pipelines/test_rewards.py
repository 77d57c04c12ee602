"""The ``rewards`` pipeline through Kedro's session and runner, after ``data``, on shards of
annotator-labelled pairs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smpo_pipeline import smoothing
from tests.conftest import make_kedro_project, run_kedro
from tests.pickapic_factory import annotated_rows, write_shard

ORACLE = {"rewards": {"model": "shapes-oracle", "model_options": {}, "bounds": {"method": "fixed"},
                     "reference": None}}


@pytest.fixture(scope="module")
def scored_project(tmp_path_factory):
    project = make_kedro_project(tmp_path_factory.mktemp("tmp") / "project")
    for s in range(2):
        write_shard(project / f"data/01_raw/pickapic/shard-{s}.parquet", annotated_rows(60, seed=s))
    # The oracle as the smoothing reward and no reward model trained, as the sdxl profile runs (the
    # learned one: tests/pipelines/test_reward_model.py).
    run_kedro(project, ["data", "reward_model", "rewards"], ORACLE | {"reward_model": {"train": False}})
    return project


def test_reward_order_agrees_with_most_human_labels_but_not_all(scored_project):
    report = json.loads((scored_project / "reports/rewards.json").read_text())
    assert report["reward_model"] == "shapes-oracle"
    assert 0.5 < report["reward_label_agreement"] < 1.0
    assert (scored_project / "reports/figures/rewards.png").stat().st_size > 10_000


def test_preference_pairs_carry_both_orders_and_the_smoothed_probability(scored_project):
    pairs = pd.read_parquet(scored_project / "data/04_feature/preference_pairs.parquet")
    s_w = np.where(pairs.winner == 0, pairs.score_0, pairs.score_1)
    s_l = np.where(pairs.winner == 0, pairs.score_1, pairs.score_0)
    assert (s_w >= s_l).all()  # ordered by reward (the default, SmPO's choice)
    np.testing.assert_allclose(pairs.p, 1 / (1 + np.exp(-(s_w - s_l))), atol=1e-6)  # bounds [0, 1], tau 1
    np.testing.assert_allclose(pairs.smpo_weight, 10 * (2 * pairs.p - 1), atol=1e-6)
    assert {"reward_winner", "label_winner", "orders_agree", "image_w_uid", "image_l_uid"} <= set(pairs.columns)


def test_a_second_run_scores_nothing_and_training_can_take_the_label_order(scored_project, tmp_path):
    import shutil

    project = shutil.copytree(scored_project, tmp_path / "project")  # a copy: the other tests read τ = 1
    parts = sorted(p.relative_to(project) for p in (project / "data/03_primary/reward_scores").rglob("part-*.parquet"))
    run_kedro(project, ["rewards"], {"rewards": ORACLE["rewards"] | {"tau": 0.5}})
    assert sorted(p.relative_to(project) for p in (project / "data/03_primary/reward_scores").rglob("part-*.parquet")) \
        == parts
    pairs = smoothing.orient_pairs(pd.read_parquet(project / "data/04_feature/preference_pairs.parquet"), "label")
    decided = pairs.label_winner >= 0
    assert (pairs.winner[decided] == pairs.label_winner[decided]).all()
    assert (pairs.p[~pairs.orders_agree & decided] < 0.5).any()  # the reward disagrees: p below ½


def test_a_reward_model_trained_on_other_pairs_is_refused_before_anything_is_scored():
    from smpo_pipeline.keys import train_pairs_digest
    from smpo_pipeline.params import DataParams, RewardsParams
    from smpo_pipeline.pipelines.rewards.nodes import score_pair_images

    pairs = pd.DataFrame({"image_0_uid": ["a", "c"], "image_1_uid": ["b", "d"], "caption": ["x", "y"],
                          "label_0": [1.0, 0.0], "split": ["train", "validation"]})
    relabelled = pairs.assign(label_0=[0.0, 0.0])  # the train pair's label changed
    summary = {"trained": True, "run_id": "r1", "train_pairs_digest": train_pairs_digest(pairs)}
    assert train_pairs_digest(pairs.assign(label_0=[1.0, 1.0])) == summary["train_pairs_digest"]  # held-out rows don't count
    with pytest.raises(ValueError, match=r"reward_model_training: the reward model of run r1 was trained on other pairs"):
        score_pair_images(relabelled, summary, RewardsParams(), DataParams())
    with pytest.raises(ValueError, match="kedro run --pipelines reward_model,rewards"):
        score_pair_images(pairs, summary | {"train_pairs_digest": None}, RewardsParams(), DataParams())
