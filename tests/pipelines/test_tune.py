"""The Optuna study (``kedro run --pipelines tune``) on the reduced project: killed after two
trials with kill -9, started again, it continues to the configured number of trials."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from smpo_pipeline.runtime import environment_without_process_group
from tests.conftest import run_kedro

TUNE = ("tune.n_trials=4,tune.steps=2,tune.report_every=1,tune.validation_prompts=2,tune.startup_trials=1,"
        "tune.heartbeat_seconds=2,train.evaluation.steps=2,train.batch_size=4,train.forward_noise=cached,"
        "cache.inversion.num_steps=5")


def _nested(params: str) -> dict:
    """``a.b=1,c=x`` as the nested dict of typed values Kedro's CLI makes of it."""
    nested: dict = {}
    for item in params.split(","):
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return nested


def _finished(db) -> int:
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def _tune(project, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "kedro", "run", "--pipelines", "tune", "--params", TUNE],
                            cwd=project, env=environment_without_process_group(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_a_study_killed_after_two_trials_continues_to_the_configured_count(trained_project):
    import optuna

    db = trained_project / "data/09_tuning/optuna.db"
    run = _tune(trained_project)
    deadline = time.monotonic() + 400
    while _finished(db) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.poll() is None, run.stdout.read()[-3000:]  # still running: two trials done, two to go
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert 2 <= _finished(db) < 4
    # Started again (in this process, with the same settings as runtime parameters, as `kedro run
    # --params` passes them): it continues the killed study.
    run_kedro(trained_project, ["tune"], _nested(TUNE))
    report = json.loads((trained_project / "reports/tuning/study.json").read_text())
    assert report["study"].startswith("smpo-")  # the study's name carries the key of its settings
    study = optuna.load_study(study_name=report["study"], storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and all({"beta", "tau"} == set(t.params) for t in finished)
    assert report["finished_trials"] == 4 and report["best"]["value"] == study.best_value
    best = yaml.safe_load((trained_project / "reports/tuning/best_params.yml").read_text())
    assert best["train"]["beta"]["smpo"] == pytest.approx(study.best_params["beta"], rel=1e-3)
    assert best["rewards"]["tau"] == pytest.approx(study.best_params["tau"], rel=1e-3)
    for plot in ("tuning_history.png", "tuning_importances.png"):
        assert (trained_project / "reports/figures" / plot).stat().st_size > 5_000
    # Trials scored on other prompts are a new study, not four old values to rank new trials against.
    other = TUNE.replace("tune.n_trials=4", "tune.n_trials=1").replace("validation_prompts=2", "validation_prompts=3")
    run_kedro(trained_project, ["tune"], _nested(other))
    changed = json.loads((trained_project / "reports/tuning/study.json").read_text())
    assert changed["study"] != report["study"] and changed["finished_trials"] == 1
    assert len(optuna.load_study(study_name=report["study"], storage=f"sqlite:///{db}").trials) == len(study.trials)
