"""A reduced-size run of the ``bootstrap`` pipeline through Kedro's own session and runner, in a
temporary copy of the project, checking everything it writes."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA


@pytest.fixture()
def bootstrapped(bootstrapped_project):
    return bootstrapped_project  # shared with the other reduced projects: read only


@pytest.mark.slow
def test_bootstrap_writes_prompt_sets_as_plain_text(bootstrapped):
    prompts = {name: (bootstrapped / f"data/01_raw/prompts/{name}.txt").read_text().splitlines()
               for name in ("train", "validation", "test")}
    assert len(prompts["train"]) == 12 and len(prompts["test"]) == len(prompts["validation"]) == 168
    assert not set(prompts["train"]) & set(prompts["test"])


@pytest.mark.slow
def test_bootstrap_writes_pickapic_v2_shards(bootstrapped):
    shards = sorted((bootstrapped / "data/01_raw/pickapic").glob("*.parquet"))
    assert len(shards) == 5  # 12 prompts × 2 pairs of their 3 candidates, 5 rows a shard
    table = pq.read_table(shards[0])
    assert table.schema.remove_metadata() == PICKAPIC_V2_SCHEMA
    rows = pq.ParquetDataset([str(s) for s in shards]).read().to_pylist()
    assert len(rows) == 24 and all(row["num_example_per_prompt"] == 2 for row in rows)
    uids = {row[f"image_{k}_uid"] for row in rows for k in (0, 1)}
    assert 24 < len(uids) <= 36  # 3 candidates a prompt, each with one uid in every row it appears in
    assert {row[f"model_{k}"] for row in rows for k in (0, 1)} == {"tiny-sdxl-base@cfg3"}  # one generator
    for row in rows:
        assert (row["label_0"], row["label_1"]) in {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
        assert row["jpg_0"][:2] == b"\xff\xd8" and row["jpg_1"][:2] == b"\xff\xd8"  # JPEG SOI
        chosen = {1.0: row["image_0_uid"], 0.0: row["image_1_uid"], 0.5: ""}[row["label_0"]]
        assert row["best_image_uid"] == chosen and row["has_label"] and row["are_different"]


@pytest.mark.slow
def test_bootstrap_saves_a_loadable_base_model_and_a_report(bootstrapped):
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.manifest import manifest_problems

    pipe = StableDiffusionXLPipeline.from_pretrained(bootstrapped / "data/01_raw/base_model")
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the trained VAE's latents
    # base_model.noise_schedule (here the reduced run's ε) travels in the scheduler's config, as stock
    # diffusers reads it (the shipped base's v schedule: tests/test_raw_data.py)
    scheduler = pipe.scheduler.config
    assert (scheduler.prediction_type, scheduler.rescale_betas_zero_snr, scheduler.timestep_spacing) == \
        ("epsilon", False, "leading")
    report = json.loads((bootstrapped / "reports/bootstrap.json").read_text())
    assert set(report["test_prompts"]["base_model"]["accuracy"]) == {"background", "color", "position", "size", "shape"}
    assert report["test_prompts"]["ideal_renders"]["accuracy"]["background"] == 1.0
    # The VAE's round trip of the same renders: the ceiling of what the model can draw.
    through = report["test_prompts"]["ideal_renders_through_vae"]["mean_oracle_reward"]
    assert through < report["test_prompts"]["ideal_renders"]["mean_oracle_reward"]
    assert report["annotations"]["pairs"] == 24 and report["annotations"]["images"] == 36
    assert report["annotations"]["second_generator"] == {"mixed_pairs": 0, "win_share": None}
    assert "second_generator" not in report["test_prompts"]
    assert (bootstrapped / "data/02_intermediate/second_generator/not_trained.json").is_file()  # no copy of the base
    assert set(report["unet"]["caption_mistake_shares"]) == {"swap_colors", "position", "color", "shape", "size"}
    assert [point["step"] for point in report["unet"]["validation_curve"]] == [3]
    manifest = json.loads((bootstrapped / "data/01_raw/MANIFEST.json").read_text())
    assert "base_model/unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert manifest_problems(bootstrapped / "data/01_raw", manifest["files"]) == []


@pytest.fixture(scope="module")
def two_generators(tmp_path_factory):
    """The reduced bootstrap with one of each prompt's 3 candidates drawn by a second generator."""
    from tests.conftest import REDUCED, make_kedro_project, run_kedro

    project = make_kedro_project(tmp_path_factory.mktemp("two_generators") / "project")
    pairs = REDUCED["pairs"] | {"second_generator": {"candidates_per_prompt": 1,
                                                     "training": {"steps": 2, "batch_size": 8, "renders_per_prompt": 1}}}
    run_kedro(project, ["bootstrap"], REDUCED | {"pairs": pairs})
    return project


@pytest.mark.slow
def test_a_second_generator_draws_part_of_the_candidates_and_is_reported(two_generators):
    from diffusers import StableDiffusionXLPipeline

    shards = sorted((two_generators / "data/01_raw/pickapic").glob("*.parquet"))
    rows = pq.ParquetDataset([str(s) for s in shards]).read().to_pylist()
    # Each image names its model (Pick-a-Pic's model_0 / model_1), the same in every row it is in.
    assert {row[f"model_{k}"] for row in rows for k in (0, 1)} == {"tiny-sdxl-base@cfg3", "tiny-sdxl-recaptioned@cfg3"}
    by_uid = {row[f"image_{k}_uid"]: row[f"model_{k}"] for row in rows for k in (0, 1)}
    assert all(by_uid[row[f"image_{k}_uid"]] == row[f"model_{k}"] for row in rows for k in (0, 1))
    per_prompt = {}
    for uid, model in by_uid.items():
        caption = next(r["caption"] for r in rows if uid in (r["image_0_uid"], r["image_1_uid"]))
        per_prompt.setdefault(caption, []).append(model)
    assert all(models.count("tiny-sdxl-recaptioned@cfg3") <= 1 for models in per_prompt.values())
    report = json.loads((two_generators / "reports/bootstrap.json").read_text())
    mixed = report["annotations"]["second_generator"]
    # two of a prompt's three possible pairs set the models against each other: at least one of its two
    assert 12 <= mixed["mixed_pairs"] <= 24 and (mixed["win_share"] is None or 0 <= mixed["win_share"] <= 1)
    assert set(report["test_prompts"]["second_generator"]["accuracy"]) == set(report["test_prompts"]["base_model"]["accuracy"])
    # The second generator is a stock diffusers pipeline, trained away from the base.
    second = StableDiffusionXLPipeline.from_pretrained(two_generators / "data/02_intermediate/second_generator")
    base = StableDiffusionXLPipeline.from_pretrained(two_generators / "data/01_raw/base_model")
    assert not all(bool((a == b).all()) for a, b in zip(second.unet.parameters(), base.unet.parameters(), strict=True))


def test_the_manifest_names_an_altered_a_missing_and_an_unlisted_file(bootstrapped, tmp_path):
    import shutil

    from smpo_pipeline.manifest import manifest_problems

    raw = shutil.copytree(bootstrapped / "data/01_raw", tmp_path / "raw")
    files = json.loads((raw / "MANIFEST.json").read_text())["files"]
    (raw / "prompts/test.txt").write_text("changed\n")
    (raw / "prompts/validation.txt").unlink()
    (raw / "extra.bin").write_bytes(b"x")
    problems = manifest_problems(raw, files)
    assert len(problems) == 3
    assert problems[0] == "prompts/validation.txt: listed in MANIFEST.json but missing"
    assert problems[1] == "extra.bin: not listed in MANIFEST.json"
    assert problems[2].startswith("prompts/test.txt: sha256 ")


@pytest.mark.slow
def test_an_invalid_parameter_stops_the_session_naming_the_key(bootstrapped):
    from kedro.framework.session import KedroSession
    from kedro.validation.exceptions import ParameterValidationError

    # Nodes take pydantic-typed parameters, so Kedro's own validator checks them on load, and the
    # project's hook validates the whole of conf/ (`params.validate_parameters`). Which of the two
    # speaks first depends on what earlier sessions in this process loaded; both name the key.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(bootstrapped)
        with (pytest.raises((ParameterValidationError, ValueError),
                            match=r"(?s)base_model.*unet\.steps:?\s+Input should be greater than 0"),
              KedroSession.create(project_path=bootstrapped, runtime_params={"base_model": {"unet": {"steps": -1}}}) as s):
            s.load_context().params  # noqa: B018 - loading is what validates


def test_the_second_generators_share_counts_mixed_pairs_and_their_decided_labels():
    from smpo_pipeline.pipelines.bootstrap.nodes import _second_generator_share

    base, second = "tiny-sdxl-base@cfg3", "tiny-sdxl-recaptioned@cfg3"
    rows = {"model_0": [base, second, base, base, second],
            "model_1": [base, second, second, second, base],
            "label_0": [1.0, 0.0, 0.5, 1.0, 1.0],
            "label_1": [0.0, 1.0, 0.5, 0.0, 0.0]}
    # the last three pairs are mixed; the tie is not decided; the second generator wins one of the other two
    assert _second_generator_share(rows) == {"mixed_pairs": 3, "win_share": 0.5}
    assert _second_generator_share({k: v[:2] for k, v in rows.items()}) == {"mixed_pairs": 0, "win_share": None}


def test_without_second_generator_candidates_nothing_is_trained_and_the_base_draws_every_candidate():
    from smpo_pipeline.datasets.diffusers_pipeline import NotTrained
    from smpo_pipeline.params import BaseModelParams, PairsParams, WorldParams
    from smpo_pipeline.pipelines.bootstrap.nodes import train_second_generator

    pairs = PairsParams(candidates_per_prompt=4, pairs_per_prompt=6)  # second_generator.candidates_per_prompt: 0
    marker = train_second_generator(object(), ["a prompt"], WorldParams(), BaseModelParams(), pairs)
    assert isinstance(marker, NotTrained) and "candidates_per_prompt is 0" in marker.reason
