"""Reward models (loaded through their real loading code from locally saved tiny checkpoints),
the on-disk score cache, and SmPO's smoothing against the reference formulas."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smpo_pipeline import smoothing
from smpo_pipeline.params import validate_parameters
from smpo_pipeline.rewards import build_reward_model
from smpo_pipeline.rewards.cache import ScoreCache, score_missing
from smpo_pipeline.world.grammar import all_compositions
from smpo_pipeline.world.render import render

# ---------------------------------------------------------------------------- smoothing


def test_smoothing_matches_the_official_expression_at_tau_1():
    rng = np.random.default_rng(0)
    s_w, s_l = rng.uniform(0.1, 0.3, 1000), rng.uniform(0.1, 0.3, 1000)
    low, high = smoothing.PICKSCORE_LOW, smoothing.PICKSCORE_HIGH
    r_w, r_l = smoothing.normalise(s_w, low, high), smoothing.normalise(s_l, low, high)
    official = np.exp(r_w) / (np.exp(r_w) + np.exp(r_l))  # SmPO preprocessing.py
    np.testing.assert_allclose(smoothing.preference_probability(r_w, r_l, 1.0), official, atol=1e-6)
    np.testing.assert_allclose(r_w, (s_w - 0.11543526500463486) / (0.28201571106910706 - 0.11543526500463486), atol=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0, 10.0])
def test_smoothing_with_a_temperature_and_the_smpo_weight(tau):
    rng = np.random.default_rng(1)
    r_w, r_l = rng.normal(size=500), rng.normal(size=500)
    p = smoothing.preference_probability(r_w, r_l, tau)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(r_w - r_l) / tau)), atol=1e-6)
    np.testing.assert_allclose(smoothing.smpo_weight(p, 10.0), 10.0 * (2 * p - 1), atol=1e-6)
    assert smoothing.smpo_weight(0.5, 10.0) == 0.0


def test_smoothing_is_stable_for_huge_margins_and_rejects_bad_arguments():
    p = smoothing.preference_probability(np.array([1e4, -1e4]), np.zeros(2), 1e-3)
    assert np.isfinite(p).all() and p[0] == 1.0 and p[1] == 0.0
    with pytest.raises(ValueError, match="tau must be > 0"):
        smoothing.preference_probability(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        smoothing.smpo_weight(0.7, -1.0)
    with pytest.raises(ValueError, match="high > low"):
        smoothing.normalise([0.2], 0.3, 0.1)
    assert smoothing.quantile_bounds(np.arange(101.0), 0.1, 0.9) == (10.0, 90.0)


def test_orient_pairs_puts_the_annotators_winner_first_and_flips_p_with_it():
    import pandas as pd

    # Reward-ordered rows (as pipelines/rewards writes them): the labels agree, disagree, and tie.
    pairs = pd.DataFrame({
        "image_0_uid": ["a", "c", "e"], "image_1_uid": ["b", "d", "f"],
        "reward_winner": [0, 1, 0], "label_winner": [0, 0, -1], "winner": [0, 1, 0],
        "image_w_uid": ["a", "d", "e"], "image_l_uid": ["b", "c", "f"],
        "image_w_file": ["a.jpg", "d.jpg", "e.jpg"], "image_l_file": ["b.jpg", "c.jpg", "f.jpg"],
        "r_w": [0.9, 0.6, 0.5], "r_l": [0.1, 0.4, 0.5], "margin": [0.8, 0.2, 0.0],
    })
    pairs["p"] = smoothing.preference_probability(pairs.r_w, pairs.r_l)
    pairs["smpo_weight"] = smoothing.smpo_weight(pairs.p)
    assert smoothing.orient_pairs(pairs, "reward") is pairs
    by_label = smoothing.orient_pairs(pairs, "label")
    assert by_label.image_w_uid.tolist() == ["a", "c", "e"] and by_label.image_l_uid.tolist() == ["b", "d", "f"]
    assert by_label.image_w_file[1] == "c.jpg" and by_label.winner.tolist() == [0, 0, 0]
    assert (by_label.r_w[1], by_label.r_l[1], by_label.margin[1]) == (0.4, 0.6, -0.2)
    np.testing.assert_allclose(by_label.p, smoothing.preference_probability(by_label.r_w, by_label.r_l))
    assert by_label.smpo_weight[1] < 0 < by_label.smpo_weight[0]  # SmPO on label order: the reward disagrees
    assert pairs.image_w_uid[1] == "d"  # the input is left as it was
    with pytest.raises(ValueError, match="pair order must be 'reward' or 'label'"):
        smoothing.orient_pairs(pairs, "human")


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        ({"tau": 0}, "rewards.tau: Input should be greater than 0"),
        ({"gamma": -1}, "rewards.gamma: Input should be greater than 0"),
        ({"bounds": {"low": 1.0, "high": 0.5}}, "rewards.bounds: Value error, high (0.5) must be greater than low (1.0)"),
        ({"model": "hpsv3"}, "rewards.model: Input should be 'shapes-oracle', 'pickscore', 'clip' or 'aesthetic'"),
    ],
)
def test_reward_parameters_are_validated_naming_the_key(rewards, message):
    with pytest.raises(ValueError) as error:
        validate_parameters({"rewards": rewards})
    assert message in str(error.value)


# ---------------------------------------------------------------------------- reward models


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory, grammar_tokenizer):
    """A randomly initialised tiny CLIP + processor saved as a standard checkpoint directory."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": len(grammar_tokenizer), "max_position_embeddings": 16,
                     "bos_token_id": grammar_tokenizer.bos_token_id, "eos_token_id": grammar_tokenizer.eos_token_id,
                     "pad_token_id": grammar_tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=grammar_tokenizer).save_pretrained(path)
    return path


def _samples(n=6, seed=0):
    rng = np.random.default_rng(seed)
    comps = all_compositions()
    prompts = [comps[int(i)].prompt for i in rng.choice(len(comps), n)]
    return [render(p, rng=rng) for p in prompts], prompts


def test_pickscore_and_clip_score_the_cosine_of_the_loaded_checkpoint(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    images, prompts = _samples()
    pickscore = build_reward_model("pickscore", model_path=str(tiny_clip_dir))
    clip = build_reward_model("clip", model_path=str(tiny_clip_dir))
    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True, max_length=16)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
    expected = torch.nn.functional.cosine_similarity(img, txt).numpy()
    np.testing.assert_allclose(pickscore.score(images, prompts), expected, atol=1e-5)
    np.testing.assert_allclose(clip.score(images, prompts), 100 * expected, atol=1e-3)
    assert pickscore.model_id != clip.model_id and pickscore.model_id.startswith("pickscore-")


def test_aesthetic_predictor_loads_safetensors_and_weights_only_torch_files(tiny_clip_dir, tmp_path):
    from safetensors.torch import save_file

    from smpo_pipeline.rewards.models import AestheticMLP

    torch.manual_seed(1)
    head = AestheticMLP.build(16)
    state = {f"layers.{k}": v.contiguous() for k, v in head.state_dict().items()}  # the published key names
    save_file(state, tmp_path / "head.safetensors")
    torch.save(state, tmp_path / "head.pth")
    images, prompts = _samples(4)
    a = build_reward_model("aesthetic", clip_path=str(tiny_clip_dir), mlp_path=str(tmp_path / "head.safetensors"))
    b = build_reward_model("aesthetic", clip_path=str(tiny_clip_dir), mlp_path=str(tmp_path / "head.pth"))
    scores = a.score(images, prompts)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, b.score(images, prompts), atol=1e-6)


def test_unknown_reward_model_is_named():
    with pytest.raises(ValueError, match="unknown reward model 'hpsv2'"):
        build_reward_model("hpsv2")


def test_oracle_reward_model_prefers_the_right_image():
    model = build_reward_model("shapes-oracle")
    prompt = "a large red square at the center on a blue background"
    other = "a small green circle at the left on a blue background"
    scores = model.score([render(prompt), render(other)], [prompt, prompt])
    assert scores[0] > scores[1]


# ---------------------------------------------------------------------------- score cache


def _image_file(path, n):
    from smpo_pipeline.pickapic import jpeg_bytes

    images, prompts = _samples(n, seed=3)
    pq.write_table(pa.table({"image_uid": [f"u{i}" for i in range(n)], "jpg": [jpeg_bytes(i) for i in images]}), path)
    return [(f"u{i}", prompts[i], path.name) for i in range(n)]


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from smpo_pipeline.rewards import build_reward_model
from smpo_pipeline.rewards.cache import ScoreCache, score_missing
import pyarrow.parquet as pq
work = Path(sys.argv[1])
table = pq.read_table(work / "images.parquet")
import json
requests = json.loads((work / "requests.json").read_text())
model = build_reward_model("shapes-oracle")
def die(batches):
    if batches == 5:
        os.kill(os.getpid(), signal.SIGKILL)   # kill -9, halfway
score_missing(requests, work, model, ScoreCache(work / "scores", model.model_id), 4, progress=False, on_batch=die)
"""


def test_a_killed_scoring_run_resumes_scoring_only_the_rest(tmp_path):
    import json

    requests = _image_file(tmp_path / "images.parquet", 40)
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_RUN), str(tmp_path)], capture_output=True)
    assert proc.returncode == -9, proc.stderr[-500:]

    model = build_reward_model("shapes-oracle")
    cache = ScoreCache(tmp_path / "scores", model.model_id)
    assert len(cache.load()) == 20  # five batches of four survived the kill
    counts = score_missing([tuple(r) for r in requests], tmp_path, model, cache, 4, progress=False)
    assert counts == {"images": 40, "from_cache": 20, "scored": 20}
    again = score_missing([tuple(r) for r in requests], tmp_path, model, cache, 4, progress=False)
    assert again == {"images": 40, "from_cache": 40, "scored": 0}
    fresh = ScoreCache(tmp_path / "fresh", model.model_id)
    score_missing([tuple(r) for r in requests], tmp_path, model, fresh, 40, progress=False)
    assert fresh.load() == cache.load()  # resumed scores equal an uninterrupted run's


def test_an_unreadable_cache_part_is_set_aside_and_rescored(tmp_path):
    requests = _image_file(tmp_path / "images.parquet", 8)
    model = build_reward_model("shapes-oracle")
    cache = ScoreCache(tmp_path / "scores", model.model_id)
    score_missing(requests, tmp_path, model, cache, 4, progress=False)
    first = sorted(cache.directory.glob("part-*.parquet"))[0]
    first.write_bytes(b"truncated")
    counts = score_missing(requests, tmp_path, model, cache, 4, progress=False)
    assert counts["scored"] == 4 and len(cache.load()) == 8


def test_image_files_are_scored_once_and_a_changed_prompt_is_scored_again(tmp_path):
    """The evaluation's scoring: PNG files keyed by name and prompt."""
    from smpo_pipeline.rewards.cache import score_files

    images, prompts = _samples(6, seed=5)
    items = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        items.append((f"fp/{i}.png", prompts[i], tmp_path / f"{i}.png"))
    model = build_reward_model("shapes-oracle")
    cache = ScoreCache(tmp_path / "scores", model.model_id)
    scores, scored = score_files(items, model, cache, 4)
    assert scored == 6 and len(list(cache.directory.glob("part-*.parquet"))) == 2  # batches of 4 and 2
    np.testing.assert_allclose(scores, model.score(images, prompts))
    again, scored = score_files(items[::-1], model, cache, 4)
    assert scored == 0 and list(again) == list(scores[::-1])
    other = [(uid, prompts[(i + 1) % 6], path) for i, (uid, _, path) in enumerate(items)]
    changed, scored = score_files(other, model, cache, 4)
    assert scored == 6 and list(changed) == list(model.score(images, [p for _, p, _ in other]))


def test_pairs_are_oriented_by_the_reward_and_keep_the_labels_order_beside_it():
    import pandas as pd

    from smpo_pipeline.smoothing import reward_oriented_pairs

    pairs = pd.DataFrame({"label_0": [1.0, 0.0, 0.5], "label_1": [0.0, 1.0, 0.5], "is_tie": [False, False, True],
                          "image_0_uid": ["a", "c", "e"], "image_1_uid": ["b", "d", "f"],
                          "image_0_file": ["x", "x", "y"], "image_1_file": ["x", "y", "y"]})
    # Pair 0: the reward agrees with the label; pair 1: it prefers the label's loser; pair 2: a tie.
    out = reward_oriented_pairs(pairs, [0.9, 0.8, 0.3], [0.1, 0.2, 0.6], [0.9, 0.8, 0.3], [0.1, 0.2, 0.6], tau=0.5)
    assert out.reward_winner.tolist() == [0, 0, 1] and out.label_winner.tolist() == [0, 1, -1]
    assert out.orders_agree.tolist() == [True, False, False]
    assert out.image_w_uid.tolist() == ["a", "c", "f"] and out.image_l_file.tolist() == ["x", "y", "y"]
    assert out.margin.tolist() == pytest.approx([0.8, 0.6, 0.3]) and (out.p > 0.5).all()
    assert out.p.tolist() == pytest.approx(1 / (1 + np.exp(-out.margin.to_numpy() / 0.5)))
    assert out.smpo_weight.tolist() == pytest.approx(10.0 * (2 * out.p - 1))
    assert list(pairs.columns) == ["label_0", "label_1", "is_tie", "image_0_uid", "image_1_uid", "image_0_file",
                                   "image_1_file"]  # the input is left as it was
