"""The ``study`` pipeline on the reduced chain, through Kedro's session and runner: the chain's clean
pairs labelled again at two levels of the disagreement axis, then the 2-level × 3-arm grid trained
and measured, killed with kill -9 after its first cell, resumed (only the unfinished cells train),
and widened by a seed (only the new seed's cells train)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from smpo_pipeline.runtime import environment_without_process_group
from tests.conftest import CHAIN, run_kedro

# A 2-level × 1-seed grid at reduced size: every cell trains 2 steps and is measured on 4 test
# prompts and 16 held-out pairs.
STUDY = CHAIN | {"study": {
    "levels": [0.0, 1.0], "seeds": [0],
    "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 1, "deepspeed_config": None},
    "reward_model": {"steps": 10, "batch_size": 16, "warmup_steps": 2},
    "evaluation": {"max_prompts": 4, "heldout_pairs": 16, "heldout_draws": 1, "bootstrap_samples": 200}}}

# `kedro run --pipelines study` with the runtime parameters above, in a process of its own (to kill).
RUN = """
import json, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
with KedroSession.create(project_path=Path.cwd(), runtime_params=json.loads(sys.argv[1])) as session:
    session.run(pipeline_names=["study"])
"""


def _records(project) -> dict[str, float]:
    """Each kept record of the study (the base model's and every finished cell's): its mtime."""
    root = project / "data/07_model_output/study"
    return {p.name: p.stat().st_mtime_ns for p in root.glob("*.json")} if root.is_dir() else {}


@pytest.mark.slow
def test_the_study_labels_again_trains_its_grid_resumes_after_kill_9_and_widens_by_new_cells_only(trained_project):
    run = subprocess.Popen([sys.executable, "-c", RUN, json.dumps(STUDY)], cwd=trained_project,
                           env=environment_without_process_group(), start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(_records(trained_project)) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the base model's record, then the first cell's
    assert run.poll() is None, run.stdout.read()[-3000:]  # still running: cells are left to train
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = _records(trained_project)
    assert 2 <= len(before) < 7

    # The labels of each level (the study's first node, finished before the first cell).
    clean = pd.read_parquet(trained_project / "data/02_intermediate/pairs.parquet")
    labels = pd.read_parquet(trained_project / "data/04_feature/study_labels.parquet")
    assert len(labels) == 2 * len(clean) and sorted(labels.level.unique()) == [0.0, 1.0]
    assert set(labels.pair_id) == set(clean.pair_id)
    assert ((labels.label_0 + labels.label_1) == 1.0).all()
    assert (labels.is_tie == (labels.label_0 == 0.5)).all()
    levels = json.loads((trained_project / "reports/study_levels.json").read_text())
    unanimous, random = levels["levels"]
    assert unanimous["level"] == 0.0 and unanimous["pairs"] == len(clean)
    # Nearly unanimous annotators follow the oracle (the shipped labels' population is in between).
    assert unanimous["oracle_agreement"] > 0.9 > random["oracle_agreement"]

    run_kedro(trained_project, ["study"], STUDY)  # started again: only what the kill left unfinished trains
    cells = json.loads((trained_project / "data/07_model_output/study_cells.json").read_text())
    assert len(cells["cells"]) == 6 and cells["trained_now"] == 6 - (len(before) - 1)
    after = _records(trained_project)
    assert len(after) == 7 and all(after[name] == mtime for name, mtime in before.items())  # kept, not redone
    assert {(c["level"], c["arm"]) for c in cells["cells"]} == {
        (d, arm) for d in (0.0, 1.0) for arm in ("dpo", "smpo-learned", "smpo-oracle")}
    validation = int((clean.split == "validation").sum())  # all ordered by the oracle: distinct renders
    assert cells["heldout_pairs"] == min(16, validation) > 0
    assert all(len(c["test_rewards"]) == 4 and len(c["heldout_agreement"]) == cells["heldout_pairs"]
               and c["steps"] == 2 for c in cells["cells"])
    # At each level, DPO reads the level's labels; SmPO-oracle the same pairs ordered by the oracle.
    runs = {(c["level"], c["arm"]): c["run_id"] for c in cells["cells"]}
    assert len(set(runs.values())) == 6

    study = json.loads((trained_project / "reports/study.json").read_text())
    assert [row["level"] for row in study["levels"]] == [0.0, 1.0] and study["seeds"] == [0]
    for row in study["levels"]:
        assert row["reward_model"]["heldout_pairs"] > 0
        for arm, v in row["arms"].items():
            assert v["gain"]["ci_low"] <= v["gain"]["estimate"] <= v["gain"]["ci_high"]
            assert 0 <= v["heldout_agreement"]["estimate"] <= 1
            assert ("gain_over_dpo" in v) == ("heldout_agreement_over_dpo" in v) == (arm != "dpo")
    assert "| SmPO, shapes-oracle |" in (trained_project / "reports/study.md").read_text()
    for figure in ("study.png", "study_levels.png"):
        assert (trained_project / "reports/figures" / figure).stat().st_size > 5_000

    # A wider grid (a second seed) trains only the new seed's cells.
    wider = STUDY | {"study": STUDY["study"] | {"seeds": [0, 1]}}
    run_kedro(trained_project, ["study"], wider)
    cells = json.loads((trained_project / "data/07_model_output/study_cells.json").read_text())
    assert len(cells["cells"]) == 12 and cells["trained_now"] == 6 and cells["reused"] == 6
    assert json.loads((trained_project / "reports/study.json").read_text())["levels"][0]["arms"]["dpo"]["seeds"] == [0, 1]


def test_study_parameters_name_the_wrong_key(trained_project):
    from kedro.validation.exceptions import ParameterValidationError

    with pytest.raises((ParameterValidationError, ValueError),
                       match=r"(?s)levels.*study levels must be distinct, increasing and in \[0, 1\]"):
        run_kedro(trained_project, ["study"], CHAIN | {"study": {"levels": [0.5, 0.2]}})
    with pytest.raises((ParameterValidationError, ValueError), match=r"study\.train\.stepz"):
        run_kedro(trained_project, ["study"], CHAIN | {"study": {"train": {"stepz": 4}}})
