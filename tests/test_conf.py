"""Every configuration environment loads and validates against the parameter schemas."""

from __future__ import annotations

import pytest

from smpo_pipeline.params import validate_parameters
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize("env", ["local", "sdxl"])
def test_environment_parameters_validate(env):
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env=env)
    params = validate_parameters(loader["parameters"])
    if env == "sdxl":
        assert params.rewards.model == "pickscore" and not params.runtime.hf_hub_offline
        assert params.rewards.bounds.low == pytest.approx(0.11543526500463486)
        assert params.data.raw_dir == "data/01_raw/pickapic_v2"
    else:
        # SmPO smooths with the reward model learned from the pairs; the oracle is the reference
        assert params.rewards.model == "pickscore" and params.rewards.reference.model == "shapes-oracle"
        assert params.rewards.model_options["model_path"] == params.reward_model.train * "data/06_models/reward_model"
        assert params.data.raw_dir == "data/01_raw/pickapic"


def test_importing_the_package_changes_nothing_in_the_process(tmp_path):
    import subprocess
    import sys

    script = ("import os, pkgutil, importlib, smpo_pipeline; before = dict(os.environ)\n"
              "for m in pkgutil.walk_packages(smpo_pipeline.__path__, 'smpo_pipeline.'):\n"
              "    importlib.import_module(m.name)\n"
              "print(dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.stdout.strip().splitlines()[-1:] == ["True"], out.stderr[-2000:]


def test_the_project_environment_is_set_even_without_an_activated_venv(tmp_path):
    """Telemetry off, the op cache inside the project, and this interpreter's tools (dvc, deepspeed,
    ninja) first on PATH: a system ninja of another version rebuilt the op cache the venv's had built.
    (The hooks and the entry points call ``apply_project_environment``.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = ("import json, os, shutil; from smpo_pipeline.runtime import apply_project_environment as apply; apply()\n"
              "print(json.dumps({k: os.environ.get(k) for k in "
              "('DO_NOT_TRACK', 'KEDRO_DISABLE_TELEMETRY', 'DVC_NO_ANALYTICS', 'GX_ANALYTICS_ENABLED', "
              "'HF_HUB_OFFLINE', 'TORCH_EXTENSIONS_DIR')} | {'ninja': shutil.which('ninja'), 'dvc': shutil.which('dvc')}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    env = json.loads(out.stdout.strip().splitlines()[-1])
    assert env["DO_NOT_TRACK"] == "1" and env["KEDRO_DISABLE_TELEMETRY"] == "true"
    assert env["DVC_NO_ANALYTICS"] == "1" and env["GX_ANALYTICS_ENABLED"] == "false" and env["HF_HUB_OFFLINE"] == "1"
    assert env["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "data/cache/torch_extensions")
    tools = Path(sys.executable).parent
    assert Path(env["ninja"]).parent == tools and Path(env["dvc"]).parent == tools
