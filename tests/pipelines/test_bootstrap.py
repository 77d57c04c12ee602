"""A reduced-size run of the ``bootstrap`` pipeline through Kedro's own session and runner, in a
temporary copy of the project, checking everything it writes."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA
from tests.conftest import REDUCED, make_kedro_project, run_kedro

@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    project = make_kedro_project(tmp_path_factory.mktemp("tmp") / "project")
    run_kedro(project, ["bootstrap"], REDUCED)
    return project


@pytest.mark.slow
def test_bootstrap_writes_prompt_sets_as_plain_text(bootstrapped):
    prompts = {name: (bootstrapped / f"data/01_raw/prompts/{name}.txt").read_text().splitlines()
               for name in ("train", "validation", "test")}
    assert len(prompts["train"]) == 12 and len(prompts["test"]) == len(prompts["validation"]) == 168
    assert not set(prompts["train"]) & set(prompts["test"])


@pytest.mark.slow
def test_bootstrap_writes_pickapic_v2_shards(bootstrapped):
    shards = sorted((bootstrapped / "data/01_raw/pickapic").glob("*.parquet"))
    assert len(shards) == 3  # 12 pairs, 5 rows a shard
    table = pq.read_table(shards[0])
    assert table.schema.remove_metadata() == PICKAPIC_V2_SCHEMA
    rows = pq.ParquetDataset([str(s) for s in shards]).read().to_pylist()
    assert len(rows) == 12
    for row in rows:
        assert (row["label_0"], row["label_1"]) in {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
        assert row["jpg_0"][:2] == b"\xff\xd8" and row["jpg_1"][:2] == b"\xff\xd8"  # JPEG SOI
        chosen = {1.0: row["image_0_uid"], 0.0: row["image_1_uid"], 0.5: ""}[row["label_0"]]
        assert row["best_image_uid"] == chosen and row["has_label"] and row["are_different"]


@pytest.mark.slow
def test_bootstrap_saves_a_loadable_base_model_and_a_report(bootstrapped):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(bootstrapped / "data/06_models/base")
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the trained VAE's latents
    report = json.loads((bootstrapped / "reports/bootstrap.json").read_text())
    assert set(report["test_prompts"]["base_model"]["accuracy"]) == {"background", "color", "position", "size", "shape"}
    assert report["test_prompts"]["ideal_renders"]["accuracy"]["background"] == 1.0
    assert report["annotations"]["pairs"] == 12


@pytest.mark.slow
def test_an_invalid_parameter_stops_the_session_naming_the_key(bootstrapped):
    from kedro.framework.session import KedroSession
    from kedro.validation.exceptions import ParameterValidationError

    # Nodes take pydantic-typed parameters, so Kedro's own validator checks them on load.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(bootstrapped)
        with (pytest.raises(ParameterValidationError, match=r"(?s)'base_model'.*unet\.steps\s+Input should be greater than 0"),
              KedroSession.create(project_path=bootstrapped, runtime_params={"base_model": {"unet": {"steps": -1}}}) as s):
            s.load_context().params  # noqa: B018 - loading is what validates
