"""One way to key reused work (``smpo_pipeline.keys``): a training run's key changes with every
setting, every weight and every value of the pairs it reads, and a new run names what changed."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest

from smpo_pipeline.keys import changed, content_uid, digest, run_description, run_key
from smpo_pipeline.training.config import DROConfig, TrainConfig

CONFIG = TrainConfig(objective="smpo", beta=5000.0, gamma=10.0, forward_noise="none", steps=300, batch_size=32,
                     learning_rate=3e-5, warmup_steps=10, grad_clip=1.0, caption_dropout=0.2, seed=0)
PRINTS = SimpleNamespace(unet="u", vae="v", text="t")
PAIRS = pd.DataFrame({"image_w_uid": ["a", "b"], "image_l_uid": ["c", "d"], "caption": ["x", "y"], "p": [0.6, 0.7]})
COLUMNS = ["image_w_uid", "image_l_uid", "caption", "p"]


def _key(config=CONFIG, prints=PRINTS, pairs=PAIRS, **more) -> str:
    return run_key(run_description(config, prints, pairs, COLUMNS, **more))


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return tuple(v + 1 for v in value)
    if value is None:
        return 7
    if isinstance(value, DROConfig):
        return dataclasses.replace(value, margin=value.margin * 2)
    return {"other": True}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrainConfig)])
def test_every_training_setting_is_part_of_the_run_key(field):
    """No hand-kept list: a new setting of TrainConfig, learning rate and batch size included, is a new run."""
    changed_config = dataclasses.replace(CONFIG, **{field: _other(getattr(CONFIG, field))})
    assert _key(changed_config) != _key()
    named = changed(run_description(CONFIG, PRINTS, PAIRS, COLUMNS), run_description(changed_config, PRINTS, PAIRS, COLUMNS))
    assert named == (["settings.dro.margin"] if field == "dro" else [f"settings.{field}"])


def test_weights_pairs_and_extras_are_part_of_the_run_key_and_named_when_they_change():
    before = run_description(CONFIG, PRINTS, PAIRS, COLUMNS, inversion=None)
    new_p = PAIRS.assign(p=[0.6, 0.8])  # a new τ
    swapped = PAIRS.assign(image_w_uid=PAIRS.image_l_uid, image_l_uid=PAIRS.image_w_uid)  # a new winner order
    for description, name in [
        (run_description(CONFIG, SimpleNamespace(unet="u2", vae="v", text="t"), PAIRS, COLUMNS, inversion=None),
         ["weights.unet"]),
        (run_description(CONFIG, PRINTS, new_p, COLUMNS, inversion=None), ["pairs.p"]),
        (run_description(CONFIG, PRINTS, swapped, COLUMNS, inversion=None), ["pairs.image_l_uid", "pairs.image_w_uid"]),
        (run_description(CONFIG, PRINTS, PAIRS, COLUMNS, inversion={"num_steps": 4}), ["inversion"]),
    ]:
        assert run_key(description) != run_key(before)
        assert changed(before, description) == name
    assert _key() == _key()  # and the same inputs are the same run


def test_content_uid_follows_the_bytes_and_digest_is_order_free_for_mappings():
    assert content_uid(b"a") == content_uid(b"a") != content_uid(b"b")
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 2, "b": 1})


def test_the_code_digest_follows_the_code_a_module_imports_but_not_its_comments(tmp_path, monkeypatch):
    """A changed loss (objectives.py, imported by the trainer through training.step) is a new
    training run; a comment or docstring is not; a module the trainer never imports is not."""
    import shutil

    from smpo_pipeline import keys

    package = tmp_path / "smpo_pipeline"
    shutil.copytree(keys.PACKAGE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(keys, "PACKAGE_ROOT", package)

    def trainer_digest() -> str:
        keys.code_digest.cache_clear()
        return keys.code_digest("smpo_pipeline.training.trainer")

    before = trainer_digest()
    objectives = package / "objectives.py"
    objectives.write_text(objectives.read_text().replace('"""', '"""A reworded docstring. ', 1) + "\n# a comment\n")
    assert trainer_digest() == before
    (package / "world" / "render.py").write_text((package / "world" / "render.py").read_text() + "\nX = 1\n")
    assert trainer_digest() == before  # the trainer does not import the renderer
    objectives.write_text(objectives.read_text() + "\nBETA_SCALE = 2.0\n")
    assert trainer_digest() != before
    keys.code_digest.cache_clear()


def test_a_changed_tokenizer_or_scheduler_config_is_another_model(tiny_pipeline_dir):
    """Same weights, other tokens or another noise schedule: other images, other text embeddings."""
    import copy

    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.sampling import model_fingerprint
    from smpo_pipeline.training.cache import Fingerprints

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)
    before, text = model_fingerprint(pipe), Fingerprints.of(pipe, InversionConfig()).text
    other = copy.copy(pipe)
    other.tokenizer = copy.deepcopy(pipe.tokenizer)
    other.tokenizer.add_tokens(["zzz-new-word"])
    assert model_fingerprint(other) != before and Fingerprints.of(other, InversionConfig()).text != text
    other = copy.copy(pipe)
    other.scheduler = copy.deepcopy(pipe.scheduler)
    other.scheduler.register_to_config(beta_end=0.02)
    assert model_fingerprint(other) != before and model_fingerprint(pipe) == before
