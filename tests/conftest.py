"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and build every model they need from
configs, saving it locally, so the real ``from_pretrained`` loading code is what they exercise."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from pathlib import Path

import pytest
from PIL import Image

from smpo_pipeline.runtime import apply_project_environment

apply_project_environment()  # what the hooks and entry points do: tests run offline, tools first on PATH
from tests.pickapic_factory import encode, png_header_only, valid_rows, write_shard  # noqa: E402

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


@pytest.fixture(scope="session")
def stock_diffusers(tmp_path_factory):
    """``load(path, prompt=None, steps=2, guidance_scale=5.0) -> dict``: the pipeline at ``path``
    loaded (and, given a prompt, sampled) by stock diffusers in a process of its own that imports
    nothing of ours (``tests/stock_diffusers_worker.py``), started once for every test."""
    import json
    import subprocess
    import sys

    log = tmp_path_factory.mktemp("stock_diffusers") / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: warnings never fill a buffer and block the worker
        worker = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stock_diffusers_worker.py"))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                  env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})

    def load(path, prompt: str | None = None, steps: int = 2, guidance_scale: float = 5.0) -> dict:
        request = {"path": str(path), "prompt": prompt, "steps": steps, "guidance_scale": guidance_scale}
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        answer = worker.stdout.readline()
        if not answer:
            raise AssertionError(f"stock diffusers failed on {path}:\n{log.read_text()[-2000:]}")
        return json.loads(answer)

    yield load
    worker.stdin.close()
    worker.wait(timeout=60)


@pytest.fixture()
def broken_shard(tmp_path) -> tuple[Path, list[dict]]:
    """One shard holding a valid row for every awkward-but-fine case and a row for every broken one.
    ``__index_level_0__`` identifies each row; the expected outcome is in ``expected``."""
    rows = valid_rows(24)
    good_jpg = rows[0]["jpg_0"]
    cases = {
        1: ("jpg_0", b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 3),  # corrupt JPEG
        2: ("jpg_1", good_jpg[: len(good_jpg) * 9 // 10]),  # truncated JPEG (header intact)
        3: ("jpg_0", b""),  # empty bytes
        4: ("jpg_1", png_header_only(20000, 20000)),  # decompression bomb header
        5: ("jpg_0", encode(Image.new("L", (32, 32), 128), "PNG")),  # grayscale: fine
        6: ("jpg_1", encode(Image.new("RGBA", (32, 32), (1, 2, 3, 4)), "PNG")),  # RGBA: fine
        7: ("jpg_0", encode(Image.new("RGB", (48, 24), (9, 9, 9)))),  # non-square: fine
        8: ("caption", ""),
        9: ("caption", " ".join(["word"] * 500)),  # long: fine
        10: ("caption", "猫が🎨を描く 🐱"),  # CJK + emoji: fine
        11: ("label_0", 0.7),  # bad label (with label_1 0.0 or 1.0: also sum != 1)
        14: ("caption", "   "),
        15: ("jpg_0", encode(Image.new("RGB", (4, 4)))),  # below min side
    }
    for i, (column, value) in cases.items():
        rows[i][column] = value
    rows[12]["label_0"], rows[12]["label_1"] = 1.0, 1.0  # sum != 1
    rows[13]["label_0"], rows[13]["label_1"], rows[13]["best_image_uid"] = 0.5, 0.5, ""  # tie
    rows[16]["jpg_1"] = rows[16]["jpg_0"]  # identical pair
    rows[17]["are_different"] = False  # declared identical
    rows[18]["has_label"] = False
    rows[19]["best_image_uid"] = rows[19]["image_1_uid"] if rows[19]["label_0"] == 1.0 else rows[19]["image_0_uid"]
    rows.append(dict(rows[20], __index_level_0__=24))  # duplicated row
    path = write_shard(tmp_path / "raw" / "shard-0.parquet", rows)
    return path, rows


def make_kedro_project(root: Path) -> Path:
    """A copy of the project's conf/ and pyproject.toml under ``root`` (the package itself is the
    installed one), bootstrapped for ``KedroSession``; data/ and reports/ start empty."""
    import shutil

    from kedro.framework.startup import bootstrap_project

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    bootstrap_project(root)
    return root


def run_kedro(project: Path, pipelines: list[str], runtime_params: dict | None = None) -> None:
    """``kedro run --pipelines ...`` through the real session and runner, from inside ``project``."""
    from kedro.framework.session import KedroSession

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=pipelines)


# The whole embedded chain at reduced size (runtime parameters, merged as `kedro run --params` does).
REDUCED = {
    "world": {"max_train_prompts": 12},
    "base_model": {
        # SDXL's ε schedule: a 3-step v-prediction base draws nearly the same image from every seed (an
        # untrained v-model predicts the mean image), so its pairs would be ties the data gate refuses.
        # The v path is tested where it is computed (test_objectives, test_training_step).
        "noise_schedule": {"prediction_type": "epsilon", "zero_terminal_snr": False},
        "vae": {"steps": 3, "batch_size": 16, "held_out_renders": 32},
        "unet": {"steps": 3, "batch_size": 16, "warmup_steps": 1, "renders_per_prompt": 1, "curve_every": 3},
        "evaluation": {"steps": 2},
        "evaluation_seeds_per_prompt": 1,
    },
    "pairs": {"steps": 2, "rows_per_shard": 5, "candidates_per_prompt": 3, "pairs_per_prompt": 2},
    "reward_model": {"training": {"steps": 20, "batch_size": 16, "warmup_steps": 2}, "checkpoint_every": 10,
                     "bootstrap_samples": 200},
}
CHAIN = REDUCED | {
    "cache": {"batch_size": 8, "trajectories": True, "inversion": {"num_steps": 5}},
    "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "forward_noise": "cached", "seeds": [0, 1],
              "evaluation": {"steps": 2, "seeds_per_prompt": 1, "max_prompts": 16, "curve_prompts": 4}, "dro": {"buffer_size": 8, "states_per_step": 4, "sampler_steps": 4}},
    "evaluation": {"max_prompts": 4, "seeds_per_prompt": 2, "protocol": {"steps": 2}, "bootstrap_samples": 200,
                   "grid": {"prompts": 3}},
}


@pytest.fixture(scope="session")
def bootstrapped_project(tmp_path_factory) -> Path:
    """A temporary project after the ``bootstrap`` pipeline at reduced size: its raw inputs are what
    the other reduced-size projects start from (read it, never write to it)."""
    project = make_kedro_project(tmp_path_factory.mktemp("bootstrapped") / "project")
    run_kedro(project, ["bootstrap"], REDUCED)
    return project


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, bootstrapped_project):
    """A copy of the bootstrapped project after data → reward_model → rewards → cache → train
    (+ evaluate) at reduced size."""
    import shutil

    project = shutil.copytree(bootstrapped_project, tmp_path_factory.mktemp("tmp") / "project", symlinks=True)
    run_kedro(project, ["data", "reward_model", "rewards", "cache", "train"], CHAIN)
    return project
