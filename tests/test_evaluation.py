"""Evaluation: seeded images are reproducible and cached, win rates and their CIs behave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from smpo_pipeline.evaluation import image_grid, markdown_table, summarize, win_rate


def test_a_model_against_itself_wins_half_the_time_and_the_ci_covers_50_percent():
    rng = np.random.default_rng(0)
    scores, prompts = rng.random(200), np.repeat(np.arange(50), 4)
    rate, low, high = win_rate(scores, scores, prompts)
    assert rate == 0.5 and low <= 0.5 <= high
    # Two independent draws of the same model (different seeds): no real difference, the CI covers ½.
    rate, low, high = win_rate(rng.random(200), rng.random(200), prompts)
    assert low <= 0.5 <= high


def test_a_clearly_better_model_has_a_ci_above_50_percent():
    rng = np.random.default_rng(1)
    base = rng.random(400)
    rate, low, high = win_rate(base + 0.3, base + rng.normal(0, 0.1, 400), np.repeat(np.arange(100), 4))
    assert rate > 0.9 and low > 0.5 and low <= rate <= high


def _scores(models=("base", "dpo"), shift=0.1):
    rows = [{"model": m, "prompt": f"p{i}", "seed": s, "reward_model": "shapes-oracle",
             "score": 0.3 + (shift if m != "base" else 0) + 0.01 * i + 0.001 * s}
            for m in models for i in range(10) for s in (0, 1)]
    return pd.DataFrame(rows)


def test_summary_has_means_medians_errors_and_win_rates_and_a_markdown_table():
    report = summarize(_scores(("base", "dpo", "smpo")), ["base", "dpo", "smpo"], samples=300)
    r = report["shapes-oracle"]
    assert r["images_per_model"] == 20 and r["prompts"] == 10
    assert r["models"]["dpo"]["mean"] == pytest.approx(r["models"]["base"]["mean"] + 0.1)
    assert r["win_rates"]["dpo_vs_base"]["win_rate"] == 1.0 and r["win_rates"]["dpo_vs_smpo"]["win_rate"] == 0.5
    assert r["differences"]["dpo_vs_base"]["difference"] == pytest.approx(0.1)
    table = markdown_table(report, {"steps": 20})
    assert "| dpo | 1 | 0.4" in table and "+0.1000 [+0.1000, +0.1000] | 100.0% [100.0%, 100.0%]" in table
    assert "dpo vs smpo" in table


def test_the_interval_of_a_gain_widens_when_training_seeds_disagree():
    """Three runs per objective: one whose runs agree, one whose runs differ by ±0.05. The prompts
    are the same; only the resampling of runs can widen the second interval."""
    rng = np.random.default_rng(0)
    prompt_effect = rng.normal(0, 0.05, 40)
    rows = [{"model": "base", "replica": 0, "prompt": f"p{i}", "seed": s, "reward_model": "o",
             "score": 0.4 + prompt_effect[i] + 0.01 * s} for i in range(40) for s in (0, 1)]
    for model, spread in (("steady", 0.0), ("shaky", 0.05)):
        rows += [{"model": model, "replica": r, "prompt": f"p{i}", "seed": s, "reward_model": "o",
                  "score": 0.5 + spread * (r - 1) + prompt_effect[i] + 0.01 * s}
                 for r in range(3) for i in range(40) for s in (0, 1)]
    gains = summarize(pd.DataFrame(rows), ["base", "steady", "shaky"], samples=500)["o"]["differences"]
    steady, shaky = gains["steady_vs_base"], gains["shaky_vs_base"]
    assert steady["difference"] == pytest.approx(0.1) and shaky["difference"] == pytest.approx(0.1)
    assert steady["ci_high"] - steady["ci_low"] < 1e-9  # every run and prompt gains exactly 0.1
    assert shaky["ci_high"] - shaky["ci_low"] > 0.05


def test_a_model_missing_some_images_is_refused():
    scores = _scores()
    with pytest.raises(ValueError, match="same images"):
        summarize(scores.iloc[:-1], ["base", "dpo"])


def test_the_grid_puts_prompts_in_rows_and_models_in_columns():
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    grid = image_grid([[red, blue], [blue, red]], ["a red square", "a blue square"], ["base", "dpo"], cell=64)
    assert grid.size == (260 + 128, 18 + 128)
    assert grid.getpixel((260 + 10, 18 + 10)) == (255, 0, 0) and grid.getpixel((260 + 64 + 10, 18 + 10)) == (0, 0, 255)


def test_the_same_seed_gives_the_same_image_and_images_are_generated_once(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.models.sampling import SamplingProtocol, generate_cached, model_fingerprint

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)
    fp = model_fingerprint(pipe)
    protocol = SamplingProtocol(steps=3, guidance_scale=3.0, resolution=32)
    prompts, seeds = ["a red circle", "a red circle", "a blue square"], [7, 8, 7]
    first = generate_cached(pipe, fp, prompts, seeds, protocol, tmp_path / "a", batch_size=2)
    # A separate cache, other batching and the prompt first alone: the same (model, prompt, seed) → the
    # same picture. Up to rounding: PyTorch does not promise bit-identical convolutions across batch
    # sizes, and a value on a rounding edge of the 8-bit PNG can move by one level (seen under one test
    # order); another seed changes the picture by tens of levels.
    again = generate_cached(pipe, fp, prompts[:1], seeds[:1], protocol, tmp_path / "b", batch_size=1)
    pixels = lambda p: np.asarray(Image.open(p)).astype(int)  # noqa: E731
    assert np.abs(pixels(first[0]) - pixels(again[0])).max() <= 1
    assert np.abs(pixels(first[0]) - pixels(first[1])).mean() > 5  # another seed, another image
    stamps = [p.stat().st_mtime_ns for p in first]
    first[2].write_bytes(b"not a png")  # a damaged cache entry is generated again, the others are reused
    redone = generate_cached(pipe, fp, prompts, seeds, protocol, tmp_path / "a", batch_size=2)
    assert redone == first and [p.stat().st_mtime_ns for p in first[:2]] == stamps[:2]
    assert Image.open(first[2]).size == (32, 32)
    # Another protocol (scheduler) is another key: nothing is reused across protocols.
    other = generate_cached(pipe, fp, prompts[:1], seeds[:1], SamplingProtocol(3, 3.0, 32, "ddim"), tmp_path / "a")
    assert other[0] != first[0]


def test_a_prompt_file_is_read_a_prompt_a_line_and_an_empty_one_is_refused_by_name(tmp_path):
    from kedro.io import DatasetError

    from smpo_pipeline.datasets import PromptListDataset

    (tmp_path / "set.txt").write_text("a red circle\n\n  a blue square  \n")
    assert PromptListDataset(str(tmp_path / "set.txt")).load() == ["a red circle", "a blue square"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"empty\.txt holds no prompts"):
        PromptListDataset(str(tmp_path / "empty.txt")).load()
    with pytest.raises(DatasetError, match=r"missing\.txt does not exist"):
        PromptListDataset(str(tmp_path / "missing.txt")).load()


def test_the_prompt_seed_grid_gives_each_image_its_own_seed_or_every_prompt_the_same_seeds():
    from smpo_pipeline.evaluation import prompt_seed_grid

    assert prompt_seed_grid(["a", "b"], 2) == (["a", "a", "b", "b"], [0, 1, 2, 3])
    assert prompt_seed_grid(["a", "b"], 2, 5, same_seeds_for_every_prompt=True) == (["a", "a", "b", "b"], [5, 6, 5, 6])
