"""The raw inputs the repository ships under data/01_raw: exactly the files of their manifest, a base
model that stock diffusers loads and samples with nothing of ours imported, Pick-a-Pic v2 shards."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from smpo_pipeline.manifest import manifest_problems
from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA
from tests.conftest import PROJECT_ROOT

RAW = PROJECT_ROOT / "data/01_raw"


def test_the_shipped_files_are_exactly_those_of_the_manifest():
    manifest = json.loads((RAW / "MANIFEST.json").read_text())
    assert manifest["root"] == "data/01_raw"
    assert manifest_problems(RAW, manifest["files"]) == []
    assert sum(f["bytes"] for f in manifest["files"].values()) < 40 * 2**20  # a few tens of MB at most


def test_the_shipped_base_model_loads_and_samples_in_stock_diffusers(stock_diffusers):
    result = stock_diffusers(RAW / "base_model", "a large red square at the center on a blue background",
                             steps=2, guidance_scale=3.0)
    assert result == {"unet": "UNet2DConditionModel", "shape": [32, 32, 3], "finite": True, "ours_imported": False}


def test_the_shipped_base_model_was_trained_on_the_noise_schedule_the_bootstrap_names():
    """The schedule is in the model's own scheduler config (what stock diffusers samples with and
    what fine-tuning reads), and it is the one ``conf/base/parameters_bootstrap.yml`` names."""
    import yaml

    from smpo_pipeline.models.tiny_sdxl import make_noise_schedule, sampling_spacing
    from smpo_pipeline.params import NoiseScheduleParams

    conf = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_bootstrap.yml").read_text())
    named = NoiseScheduleParams(**conf["base_model"]["noise_schedule"])
    schedule = make_noise_schedule(named.prediction_type, named.zero_terminal_snr)
    saved = json.loads((RAW / "base_model/scheduler/scheduler_config.json").read_text())
    assert {key: saved[key] for key in schedule} == schedule
    assert {key: saved[key] for key in ("timestep_spacing", "steps_offset")} == sampling_spacing(schedule)


def test_the_shipped_shards_are_pickapic_v2_with_several_pairs_per_prompt():
    shards = sorted((RAW / "pickapic").glob("*.parquet"))
    assert shards
    assert all(pq.read_schema(s).remove_metadata() == PICKAPIC_V2_SCHEMA for s in shards)
    rows = pq.ParquetDataset([str(s) for s in shards]).read(columns=["caption", "num_example_per_prompt"]).to_pandas()
    prompts = (RAW / "prompts/train.txt").read_text().splitlines()
    assert set(rows.caption) == set(prompts)
    assert (rows.groupby("caption").size() == rows.groupby("caption").num_example_per_prompt.first()).all()
