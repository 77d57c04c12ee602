"""The whole embedded chain at reduced size through Kedro's session and runner: bootstrap → data →
rewards → cache → train (DPO, SmPO, DRO under DeepSpeed ZeRO-2, in-process) → validation comparison
→ evaluate."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CHAIN, run_kedro


@pytest.mark.slow
def test_each_objective_yields_a_stock_diffusers_model(trained_project, stock_diffusers):
    for objective in ("dpo", "smpo", "dro"):
        result = stock_diffusers(trained_project / f"data/06_models/{objective}")
        assert result == {"unet": "UNet2DConditionModel", "ours_imported": False}, objective


@pytest.mark.slow
def test_training_reports_per_step_metrics_and_the_comparison(trained_project):
    for objective, noise in (("dpo", "none"), ("smpo", "cached"), ("dro", "none")):
        summary = json.loads((trained_project / f"reports/training/{objective}.json").read_text())
        assert summary["trained"] and summary["forward_noise"] == noise and summary["zero_stage"] == 2
        # train.seeds [0, 1]: two runs, the second kept as a replica UNet with other weights.
        assert summary["seeds"] == [0, 1] and set(summary["per_seed"]) == {"0", "1"}
        assert summary["per_seed"]["0"]["checkpoints"] != summary["per_seed"]["1"]["checkpoints"]
        replicas = trained_project / f"data/06_models/{objective}_replicas"
        assert json.loads((replicas / "replicas.json").read_text()) == {"seeds": [1]}
        assert (replicas / "seed-1/diffusion_pytorch_model.safetensors").is_file()
        metrics = trained_project / f"reports/training/{objective}/metrics.json"
        assert {"loss", "implicit_accuracy", "grad_norm", "lr", "step_time"} <= set(json.loads(metrics.read_text()))
        assert len((trained_project / f"reports/training/{objective}/plots/metrics/loss.tsv").read_text().splitlines()) == 4
    report = json.loads((trained_project / "reports/training.json").read_text())
    assert set(report["models"]) == {"base", "dpo", "smpo", "dro"} and report["models"]["base"]["vs_base"] == 0.0
    assert report["protocol"]["images_per_model"] == 16  # train.evaluation.max_prompts × 1 seed


@pytest.mark.slow
def test_train_ends_with_the_evaluation_of_every_model_on_shared_seeds(trained_project):
    import pandas as pd
    from PIL import Image

    report = json.loads((trained_project / "reports/evaluation.json").read_text())
    oracle = report["rewards"]["shapes-oracle"]
    assert list(oracle["models"]) == ["base", "dpo", "smpo", "dro"] and oracle["images_per_model"] == 8
    assert [oracle["models"][m]["runs"] for m in oracle["models"]] == [1, 2, 2, 2]  # train.seeds [0, 1]
    assert {"dpo_vs_base", "smpo_vs_base", "dro_vs_base", "dpo_vs_smpo", "smpo_vs_dro"} <= set(oracle["win_rates"])
    assert all(w["ci_low"] <= w["win_rate"] <= w["ci_high"] for w in oracle["win_rates"].values())
    assert all(d["ci_low"] <= d["difference"] <= d["ci_high"] for d in oracle["differences"].values())
    attributes = json.loads((trained_project / "reports/evaluation_attributes.json").read_text())
    assert list(attributes) == ["base", "dpo", "smpo", "dro"] and attributes["dpo"]["images"] == 16
    assert set(attributes["base"]["accuracy"]) == {"background", "color", "position", "size", "shape"}
    assert "| dro |" in (trained_project / "reports/evaluation.md").read_text()
    index = {m: pd.read_parquet(trained_project / f"data/07_model_output/evaluation/{m}_images.parquet")
             for m in ("base", "dpo", "smpo", "dro")}
    assert all(index[m][index[m].replica == 1][["prompt", "seed"]].reset_index(drop=True)
               .equals(index["base"][["prompt", "seed"]]) for m in ("dpo", "smpo", "dro"))
    grid = Image.open(trained_project / "reports/figures/evaluation_grid.png")
    assert grid.size == (260 + 4 * 96, 18 + 3 * 96)
    assert (trained_project / "reports/figures/evaluation_rewards.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_rerun_with_the_same_settings_resumes_from_the_finished_checkpoint(trained_project):
    scores = sorted((trained_project / "data/07_model_output/evaluation_images/scores").rglob("part-*.parquet"))
    assert scores
    run_kedro(trained_project, ["train"], CHAIN)
    # The same models, prompts and seeds: the evaluation reuses every image and every score.
    assert sorted((trained_project / "data/07_model_output/evaluation_images/scores").rglob("part-*.parquet")) == scores
    summary = json.loads((trained_project / "reports/training/smpo.json").read_text())
    assert summary["steps_run_now"] == 0 and summary["checkpoints"].startswith("data/06_models/checkpoints/smpo/")
    assert (trained_project / summary["checkpoints"] / "step-0000003" / "state.json").is_file()
    loss = trained_project / "reports/training/smpo/plots/metrics/loss.tsv"
    assert len(loss.read_text().splitlines()) == 4  # the finished run's curve is kept, not reset
    # ... and so is its learning curve in the summary: the base point and the points along the run.
    assert summary["curve"][0]["step"] == 0 and summary["curve"][-1]["step"] == 3


@pytest.mark.slow
def test_the_node_trains_on_two_ranks_and_resumes_them_under_either_launcher(trained_project, tmp_path):
    """`train.num_processes: 2`: the node launches two ranks (ZeRO-2 on gloo) with torchrun, the
    default, and they must end with the same weights (the node checks every rank's checksum). Then,
    as if the run had been killed after step 2's checkpoint, DeepSpeed's launcher (what a multi-node
    hostfile run uses, here on one machine) resumes it from the checkpoint both ranks wrote, on the
    same loss curve. On a copy of the project: the other tests share it."""
    import shutil

    project = shutil.copytree(trained_project, tmp_path / "project", symlinks=True)
    launch = tmp_path / "launch"
    launch.mkdir()
    two = CHAIN["train"] | {"steps": 4, "num_processes": 2, "objectives": ["dpo"], "seeds": [0],
                            "checkpoint_every": 2, "keep_last": 2}
    run_kedro(project, ["train"], CHAIN | {"train": two})
    summary = json.loads((project / "reports/training/dpo.json").read_text())
    assert summary["processes"] == 2 and summary["steps_run_now"] == 4 and summary["zero_stage"] == 2
    checkpoints = project / summary["checkpoints"]
    assert sorted(p.name for p in (checkpoints / "step-0000002").glob("*rank*")) == [
        "data-rank0.json", "data-rank1.json", "rng-rank0.pt", "rng-rank1.pt"]
    straight = [json.loads(line)["loss"] for line in (checkpoints / "records.jsonl").read_text().splitlines()]
    shutil.rmtree(checkpoints / "step-0000004")

    run_kedro(project, ["train"], CHAIN | {"train": two | {"launcher": "deepspeed", "launch_dir": str(launch)}})
    resumed = json.loads((project / "reports/training/dpo.json").read_text())
    assert resumed["run_id"] == summary["run_id"] and resumed["reuse"] == "resumed at step 2"
    assert resumed["steps_run_now"] == 2
    again = [json.loads(line)["loss"] for line in (checkpoints / "records.jsonl").read_text().splitlines()]
    assert again == pytest.approx(straight, abs=1e-6) and len(again) == 4
    assert list(launch.iterdir()) == []  # the launch directory is cleaned up
    assert json.loads((project / "reports/training/smpo.json").read_text())["trained"] is False
    # The objectives it leaves out are markers, not base-model copies, and the evaluation skips them.
    assert [p.name for p in (project / "data/06_models/smpo").iterdir()] == ["not_trained.json"]
    # ... and their learning-curve folder is empty but there: DVC's train stage declares it.
    assert list((project / "reports/training/smpo/plots/metrics").iterdir()) == []
    assert set(json.loads((project / "reports/evaluation.json").read_text())["model_fingerprints"]) == {"base", "dpo"}


@pytest.mark.slow
def test_a_cache_built_with_other_inversion_settings_is_refused(trained_project):
    changed = CHAIN | {"cache": CHAIN["cache"] | {"inversion": {"num_steps": 4}}}
    with pytest.raises(ValueError, match=r"rebuild it with `kedro run --pipeline cache`"):
        run_kedro(trained_project, ["train"], changed)


@pytest.mark.slow
def test_a_new_tau_retrains_smpo_while_an_unchanged_rerun_reuses_its_run(trained_project, tmp_path):
    """The run id covers the smoothed probabilities: a changed rewards.tau must not find the old run
    "finished" and return the old model under the new setting. (On a copy: other tests share the project.)"""
    import shutil

    project = shutil.copytree(trained_project, tmp_path / "project", symlinks=True)
    one = CHAIN | {"train": CHAIN["train"] | {"objectives": ["smpo"], "seeds": [0]}}
    run_kedro(project, ["train"], one)
    same = json.loads((project / "reports/training/smpo.json").read_text())
    assert same["reuse"] == "finished" and same["steps_run_now"] == 0
    run_kedro(project, ["rewards", "train"], one | {"rewards": {"tau": 0.25}})
    new = json.loads((project / "reports/training/smpo.json").read_text())
    assert new["reuse"] == "new" and new["steps_run_now"] == 3 and new["run_id"] != same["run_id"]
    # The run says why it is new: of everything it depends on, only the pairs' smoothed p changed.
    assert new["changed_since_last_run"] == ["pairs.p"]
    runs = json.loads((project / "reports/training.json").read_text())["runs"]
    assert runs["smpo"]["0"] == {"run_id": new["run_id"], "reuse": "new", "changed_since_last_run": ["pairs.p"],
                                 "steps_run_now": 3}
