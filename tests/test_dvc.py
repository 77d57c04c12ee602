"""DVC on a copy of the repository at reduced size, whose working tree holds the outputs of the
reduced chain the Kedro tests ran (``trained_project``): recorded as the stages' results they are up
to date, a forced re-run of a stage by DVC reproduces its outputs, a touched module marks only the
stages that read it, a β change marks only train, an evaluation setting changed through `dvc exp run
-S` re-runs only evaluate, and a local remote restores the models and checkpoints in a fresh clone
(`dvc push` / `dvc pull`)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from smpo_pipeline.runtime import environment_without_process_group
from tests.conftest import CHAIN, PROJECT_ROOT

STAGES = ["bootstrap", "data", "reward_model", "rewards", "cache", "train", "evaluate", "study"]


def _merge(base: dict, override: dict) -> dict:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in override.items()}}


def _sh(cwd, *command, check=True):
    # dvc, and the `kedro` its stages run, are this interpreter's even when the venv is not activated:
    # importing smpo_pipeline put its directory first on PATH (runtime.py).
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment_without_process_group())
    if check and out.returncode:
        raise AssertionError(f"{' '.join(command)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if re.search(rf"Running stage '{s}'", output)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, trained_project):
    """What a clone holds (tracked and new files), with the parameter files reduced to the chain the
    Kedro tests ran, and that chain's data and reports (``trained_project``) as the working tree."""
    root = tmp_path_factory.mktemp("dvc") / "repo"
    files = _sh(PROJECT_ROOT, "git", "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for name in files:
        # The frozen study stage's reports are shipped in git, as a clone has them.
        shipped = name.startswith(("reports/study", "reports/figures/study"))
        if (PROJECT_ROOT / name).is_file() and (shipped or not name.startswith(("reports/", "notebooks/", "data/"))):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, root / name)
    for path in (root / "conf/base").glob("parameters_*.yml"):
        params = yaml.safe_load(path.read_text())
        reduced = {k: _merge(v, CHAIN[k]) if isinstance(v, dict) else v for k, v in params.items() if k in CHAIN}
        path.write_text(yaml.safe_dump(params | reduced, sort_keys=False))
    # The whole chain at these settings, run once through Kedro for the pipeline tests: running it
    # again stage by stage here would cost a process start and the work of every stage.
    for name in ("data", "reports"):
        shutil.copytree(trained_project / name, root / name, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("09_tuning", "tuning", "study*"))
    _sh(root, "git", "init", "-q", "-b", "main")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reduced copy")
    return root


@pytest.mark.slow
def test_dvc_records_the_chain_reruns_a_stage_identically_and_then_only_what_a_parameter_changes(repo, tmp_path):
    # Record the chain's outputs as the stages' results (what `dvc repro` would have written).
    _sh(repo, "dvc", "commit", "--force")
    again = _sh(repo, "dvc", "repro")
    assert _ran(again) == [] and "up to date" in again, again[-2000:]
    # A stage run by DVC from its `cmd`: the data pipeline reproduces its outputs byte for byte, so
    # nothing downstream of it has to run again.
    forced = _sh(repo, "dvc", "repro", "--force", "--single-item", "data")
    assert _ran(forced) == ["data"], forced[-3000:]
    assert "up to date" in _sh(repo, "dvc", "repro"), "the data stage's outputs changed when re-run"
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "dvc.lock")
    # A local remote: push what this commit's dvc.lock names.
    _sh(repo, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    _sh(repo, "dvc", "push")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "local remote")
    checkpoints = sorted(p.relative_to(repo) for p in (repo / "data/06_models/checkpoints").rglob("state.json"))

    # A module train reads only through other modules: DVC sees the change (tests/test_dvc_deps.py
    # keeps every stage's deps complete); reverted, so the experiment below starts from a clean tree.
    module = repo / "src/smpo_pipeline/models/tiny_sdxl.py"
    original = module.read_text()
    module.write_text(original + "\n# touched\n")
    status = _sh(repo, "dvc", "status")
    assert "train:" in status and "evaluate:" in status and "data:" not in status, status
    module.write_text(original)
    # So does a parameter: β is train's alone (evaluate follows train's outputs through the DAG).
    train_params = repo / "conf/base/parameters_train.yml"
    original = train_params.read_text()
    params = yaml.safe_load(original)
    params["train"]["beta"]["dpo"] = 2500.0
    train_params.write_text(yaml.safe_dump(params, sort_keys=False))
    status = _sh(repo, "dvc", "status")
    assert "train:" in status and "evaluate:" not in status and "cache:" not in status, status
    train_params.write_text(original)

    # An experiment through DVC: an evaluation setting re-runs the evaluate stage, and nothing else.
    # (A β experiment would also retrain: the same mechanism, at the cost of a training run.)
    changed = _sh(repo, "dvc", "exp", "run", "-S", "conf/base/parameters_evaluate.yml:evaluation.grid.prompts=2")
    assert _ran(changed) == ["evaluate"], changed[-3000:]

    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    _sh(clone, "dvc", "pull")
    assert checkpoints and all((clone / p).is_file() for p in checkpoints)
    assert (clone / "data/01_raw/base_model/model_index.json").is_file()  # from git
    for model in ("dpo", "smpo", "dro"):
        assert (clone / f"data/06_models/{model}/model_index.json").is_file()
        assert (clone / f"data/06_models/{model}_replicas/replicas.json").is_file()
