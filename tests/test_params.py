"""Parameters are validated on load and errors name the key."""

from __future__ import annotations

import pytest
import yaml

from smpo_pipeline.params import validate_parameters
from tests.conftest import PROJECT_ROOT


def _base_parameters() -> dict:
    params: dict = {}
    for path in sorted((PROJECT_ROOT / "conf" / "base").glob("parameters*.yml")):
        params |= yaml.safe_load(path.read_text()) or {}
    return params


def test_shipped_parameters_are_valid():
    parsed = validate_parameters(_base_parameters())
    assert parsed.base_model.unet.steps > 0 and parsed.runtime.hf_hub_offline


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"base_model": {"unet": {"steps": 0}}}, "base_model.unet.steps: Input should be greater than 0"),
        ({"world": {"test_share": 0.6, "validation_share": 0.5}}, "world: Value error, validation_share"),
        ({"pairs": {"guidance_scale": 3}}, "pairs.guidance_scale: unknown parameter"),
        ({"pairs": {"second_generator": {"candidates_per_prompt": 5}}},
         "pairs: Value error, second_generator.candidates_per_prompt (5) exceeds candidates_per_prompt=4"),
        ({"pairs": {"second_generator": {"training": {"steps": 0}}}},
         "pairs.second_generator.training.steps: Input should be greater than 0"),
        ({"annotators": {"population_size": "many"}}, "annotators.population_size: Input should be a valid integer"),
        ({"nonsense": 1}, "nonsense: unknown parameter"),
        ({"train": {"pair_order": {"dpo": "human"}}}, "train.pair_order.dpo: Input should be 'reward' or 'label'"),
        ({"rewards": {"order_by": "label"}}, "rewards.order_by: unknown parameter"),
        ({"train": {"loss_guidance": 0.5}}, "train.loss_guidance: Input should be greater than or equal to 1"),
        ({"train": {"timestep_sampling": "sobol"}}, "train.timestep_sampling: Input should be 'uniform' or 'stratified'"),
        ({"train": {"dro": {"states_per_step": 128, "buffer_size": 64}}},
         "train.dro: Value error, states_per_step (128) exceeds buffer_size (64)"),
    ],
)
def test_an_invalid_key_is_named(patch, message):
    params = _base_parameters()
    for section, values in patch.items():
        params[section] = (params.get(section) or {}) | values if isinstance(values, dict) else values
    with pytest.raises(ValueError, match="Invalid parameters") as error:
        validate_parameters(params)
    assert message in str(error.value)


def test_an_objective_the_pair_order_leaves_out_keeps_its_official_order():
    train = validate_parameters(_base_parameters() | {"train": {"pair_order": {"smpo": "label"}}}).train
    assert [train.order_for(o) for o in ("dpo", "smpo", "dro")] == ["label", "label", "reward"]


def test_a_list_given_to_kedro_run_params_with_spaces_is_read_as_the_list():
    """`kedro run --params` splits its argument on every comma, so a list there is written
    `train.seeds=[0 1 2]`; parsed by Kedro's own option parser, it must validate as [0, 1, 2], not
    fail or become one seed."""
    from kedro.framework.cli.utils import _split_params

    params = _base_parameters()
    override = _split_params(None, None, "train.seeds=[0 1 2],train.objectives=[dpo smpo],"
                                         "train.timestep_range=[300 1000],study.levels=[0 0.5]")
    params["train"] |= override["train"]
    params["study"] |= override["study"]
    parsed = validate_parameters(params)
    assert parsed.train.seeds == (0, 1, 2) and parsed.train.objectives == ("dpo", "smpo")
    assert parsed.train.timestep_range == (300, 1000)
    assert parsed.study.levels == [0.0, 0.5]
