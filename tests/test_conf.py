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
        assert params.rewards.model == "shapes-oracle" and params.data.raw_dir == "data/01_raw/pickapic"
