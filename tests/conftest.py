"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and build every model they need from
configs, saving it locally, so the real ``from_pretrained`` loading code is what they exercise."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import smpo_pipeline  # noqa: E402, F401 - sets the project environment

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def grammar_tokenizer():
    from smpo_pipeline.models.tokenizer import train_clip_tokenizer
    from smpo_pipeline.world.grammar import all_compositions

    return train_clip_tokenizer([c.prompt for c in all_compositions()])


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, grammar_tokenizer) -> Path:
    """An untrained tiny SDXL pipeline saved as a standard diffusers directory."""
    import torch

    from smpo_pipeline.models.tiny_sdxl import (
        TinySDXLSpec,
        assemble_pipeline,
        build_text_encoders,
        build_unet,
        build_vae,
    )

    torch.manual_seed(0)
    spec = TinySDXLSpec()
    pipe = assemble_pipeline(
        build_vae(spec), *build_text_encoders(spec, grammar_tokenizer), grammar_tokenizer, build_unet(spec)
    )
    path = tmp_path_factory.mktemp("tiny_sdxl") / "pipeline"
    pipe.save_pretrained(path, safe_serialization=True)
    return path
