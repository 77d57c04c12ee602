"""The whole embedded chain at reduced size through Kedro's session and runner: bootstrap → data →
rewards → cache → train (DeepSpeed ZeRO-2, in-process) → validation comparison."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import make_kedro_project, run_kedro
from tests.pipelines.test_bootstrap import REDUCED

CHAIN = REDUCED | {
    "cache": {"batch_size": 8, "inversion": {"num_steps": 5}},
    "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "evaluation": {"steps": 2, "seeds_per_prompt": 1}},
}


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    project = make_kedro_project(tmp_path_factory.mktemp("tmp") / "project")
    run_kedro(project, ["bootstrap", "data", "rewards", "cache", "train"], CHAIN)
    return project


@pytest.mark.slow
def test_each_objective_yields_a_stock_diffusers_model(trained_project):
    script = ("import sys; from diffusers import StableDiffusionXLPipeline as P; "
              "p = P.from_pretrained(sys.argv[1]); print(type(p.unet).__name__, 'smpo_pipeline' in sys.modules)")
    for objective in ("dpo", "smpo"):
        out = subprocess.run([sys.executable, "-c", script, str(trained_project / f"data/06_models/{objective}")],
                             capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert out.stdout.split() == ["UNet2DConditionModel", "False"], out.stderr[-1000:]


@pytest.mark.slow
def test_training_reports_per_step_metrics_and_the_comparison(trained_project):
    for objective, noise in (("dpo", "none"), ("smpo", "cached")):
        summary = json.loads((trained_project / f"reports/training/{objective}.json").read_text())
        assert summary["trained"] and summary["forward_noise"] == noise and summary["zero_stage"] == 2
        metrics = trained_project / f"reports/training/{objective}/metrics.json"
        assert {"loss", "implicit_accuracy", "grad_norm", "lr", "step_time"} <= set(json.loads(metrics.read_text()))
        assert len((trained_project / f"reports/training/{objective}/plots/metrics/loss.tsv").read_text().splitlines()) == 4
    report = json.loads((trained_project / "reports/training.json").read_text())
    assert set(report["models"]) == {"base", "dpo", "smpo"} and report["models"]["base"]["vs_base"] == 0.0


@pytest.mark.slow
def test_a_rerun_with_the_same_settings_resumes_from_the_finished_checkpoint(trained_project):
    run_kedro(trained_project, ["train"], CHAIN)
    summary = json.loads((trained_project / "reports/training/smpo.json").read_text())
    assert summary["steps_run_now"] == 0 and summary["checkpoints"].startswith("data/06_models/checkpoints/smpo/")
    assert (trained_project / summary["checkpoints"] / "step-0000003" / "state.json").is_file()
    loss = trained_project / "reports/training/smpo/plots/metrics/loss.tsv"
    assert len(loss.read_text().splitlines()) == 4  # the finished run's curve is kept, not reset


@pytest.mark.slow
def test_the_node_launches_several_processes_with_torchrun(trained_project):
    two = CHAIN | {"train": CHAIN["train"] | {"steps": 2, "num_processes": 2, "objectives": ["smpo"]}}
    run_kedro(trained_project, ["train"], two)
    summary = json.loads((trained_project / "reports/training/smpo.json").read_text())
    assert summary["processes"] == 2 and summary["steps_run_now"] == 2 and summary["checkpoints"] is None
    assert json.loads((trained_project / "reports/training/dpo.json").read_text())["trained"] is False


@pytest.mark.slow
def test_a_cache_built_with_other_inversion_settings_is_refused(trained_project):
    changed = CHAIN | {"cache": CHAIN["cache"] | {"inversion": {"num_steps": 4}}}
    with pytest.raises(ValueError, match=r"rebuild it with `kedro run --pipeline cache`"):
        run_kedro(trained_project, ["train"], changed)
