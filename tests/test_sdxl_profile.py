"""The real profile, as far as a CPU can check it: the sdxl configuration validates and carries the
official settings, the full-size SDXL builds from its published configs (meta device), and the
DeepSpeed configs parse and agree with the batch arithmetic."""

from __future__ import annotations

import json

import pytest

from smpo_pipeline.params import validate_parameters
from tests.conftest import PROJECT_ROOT


def _sdxl_parameters(overrides: dict | None = None) -> dict:
    from kedro.config import OmegaConfigLoader
    from omegaconf import OmegaConf

    params = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="sdxl")["parameters"]
    if overrides:
        params = OmegaConf.to_container(OmegaConf.merge(params, overrides))
    return params


def test_the_sdxl_profile_validates_with_the_official_smpo_sdxl_settings():
    params = validate_parameters(_sdxl_parameters())
    t, inv = params.train, params.cache.inversion
    assert (t.beta["smpo"], t.gamma, inv.num_steps, inv.renoise_iterations, t.caption_dropout) == (5000.0, 10.0, 10, 1, 0.2)
    assert t.optimizer == "adafactor" and t.gradient_checkpointing and t.objectives == ("smpo",)
    assert params.evaluation.protocol.resolution == 1024 and params.rewards.model == "pickscore"


@pytest.mark.parametrize("alternative", ["dpo_sdxl.yml", "dro_sdxl.yml"])
def test_the_official_dpo_and_dro_alternatives_validate_over_the_sdxl_profile(alternative):
    import yaml

    override = yaml.safe_load((PROJECT_ROOT / "conf/sdxl/alternatives" / alternative).read_text())
    params = validate_parameters(_sdxl_parameters(override))
    assert params.train.objectives == ((alternative[:3]),)
    assert (PROJECT_ROOT / params.train.deepspeed_config).is_file()


def test_the_full_size_sdxl_builds_from_its_published_configs_on_the_meta_device():
    from smpo_pipeline.models.sdxl import build_sdxl_text_encoders, build_sdxl_unet, parameter_count

    unet = build_sdxl_unet("meta")
    te1, te2 = build_sdxl_text_encoders("meta")
    counts = {"unet": parameter_count(unet), "text_encoder": parameter_count(te1), "text_encoder_2": parameter_count(te2)}
    print(counts)  # noqa: T201
    assert counts == {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}
    assert next(unet.parameters()).device.type == "meta"
    # The conditioning sizes the SDXL pipeline feeds it: 768 + 1280 = 2048-wide text tokens, 1280 + 6 × 256 pooled.
    assert unet.config.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert unet.config.projection_class_embeddings_input_dim == te2.config.projection_dim + 6 * 256


@pytest.mark.parametrize("name", ["zero2_8gpu.json", "zero3_offload.json", "zero2_dpo_8gpu.json", "zero2_dro_8gpu.json"])
def test_deepspeed_configs_parse_and_match_the_batch_arithmetic(name, monkeypatch):
    import deepspeed.comm as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    config = json.loads((PROJECT_ROOT / "conf/sdxl/deepspeed" / name).read_text())
    world = 8
    assert config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world == config["train_batch_size"]
    # DeepSpeed's own parser and batch assertion, as rank 0 of 8 (no process group can exist here).
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world)
    parsed = DeepSpeedConfig(config)
    assert parsed.train_batch_size == config["train_batch_size"] and parsed.bfloat16_config.enabled
    assert parsed.zero_optimization_stage == config["zero_optimization"]["stage"]


@pytest.mark.parametrize("alternative", [None, "dpo_sdxl.yml", "dro_sdxl.yml"])
def test_the_trainer_hands_deepspeed_the_profiles_batch(alternative):
    import yaml

    from smpo_pipeline.training.engine import deepspeed_config
    from smpo_pipeline.training.runs import train_config

    override = yaml.safe_load((PROJECT_ROOT / "conf/sdxl/alternatives" / alternative).read_text()) if alternative else None
    train = validate_parameters(_sdxl_parameters(override)).train
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(PROJECT_ROOT)
        ds = deepspeed_config(train_config(train.objectives[0], train, "none"))
    on_file = json.loads((PROJECT_ROOT / train.deepspeed_config).read_text())
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * train.num_processes \
        == on_file["train_batch_size"]
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == train.zero_stage


def test_the_base_model_dataset_swaps_in_another_vae(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.datasets import DiffusersPipelineDataset

    vae = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir).vae
    with __import__("torch").no_grad():
        for p in vae.parameters():
            p.mul_(0.5)
    vae.save_pretrained(tmp_path / "vae")
    pipe = DiffusersPipelineDataset(str(tiny_pipeline_dir), vae=str(tmp_path / "vae")).load()
    assert all(a.equal(b) for a, b in zip(pipe.vae.parameters(), vae.parameters(), strict=True))
    hub = DiffusersPipelineDataset("stabilityai/stable-diffusion-xl-base-1.0")
    assert hub.exists()  # a hub id is read-only and always "exists"; saving to it is refused
    with pytest.raises(Exception, match="hub id"):
        hub.save(pipe)
