"""Tokenizer, the tiny SDXL-architecture model and its stock-diffusers round trip."""

from __future__ import annotations

import pytest
import torch

from smpo_pipeline.models.conditioning import encode_prompts, time_ids
from smpo_pipeline.models.tiny_sdxl import TinySDXLSpec, build_unet, build_vae, count_parameters
from smpo_pipeline.world.grammar import all_compositions


def test_tokenizer_round_trips_every_prompt_with_one_token_per_word(grammar_tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    grammar_tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    for comp in all_compositions()[::7]:
        ids = reloaded(comp.prompt).input_ids
        assert len(ids) == len(comp.prompt.split()) + 2  # one token a word, plus BOS/EOS
        assert reloaded.decode(ids, skip_special_tokens=True) == comp.prompt
        assert ids == grammar_tokenizer(comp.prompt).input_ids


def test_tokenizer_survives_any_text(grammar_tokenizer):
    for text in ["日本語のキャプション", "🎨🖼️ emoji", "UPPER case, punctuation!", "word " * 500]:
        ids = grammar_tokenizer(text, truncation=True, max_length=16).input_ids
        assert 2 < len(ids) <= 16
        assert grammar_tokenizer.unk_token_id not in ids[1:-1]


def test_default_sizes_match_the_measured_pilot():
    spec = TinySDXLSpec()
    assert 1_000_000 <= count_parameters(build_unet(spec)) <= 2_000_000
    assert 500_000 <= count_parameters(build_vae(spec)) <= 800_000
    assert spec.latent_size == 16


def test_our_conditioning_equals_the_pipelines_own(tiny_pipeline_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)
    prompts = [c.prompt for c in all_compositions()[:3]]
    with torch.no_grad():
        ours, ours_pooled = encode_prompts(
            (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2), prompts
        )
        theirs, _, theirs_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert torch.equal(ours, theirs) and torch.equal(ours_pooled, theirs_pooled)
    assert ours.shape == (3, 16, 64) and ours_pooled.shape == (3, 32)
    expected = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(time_ids(32, 2), expected.repeat(2, 1))


def test_saved_model_loads_and_samples_in_stock_diffusers_without_our_code(tiny_pipeline_dir, stock_diffusers):
    files = {p.name for p in tiny_pipeline_dir.rglob("*")}
    assert "model_index.json" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert any(f.endswith(".safetensors") for f in files)
    result = stock_diffusers(tiny_pipeline_dir, "a large red square at the center on a blue background", steps=3)
    assert result == {"unet": "UNet2DConditionModel", "shape": [32, 32, 3], "finite": True, "ours_imported": False}


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_is_a_function_of_the_seed_not_the_batch(tiny_pipeline_dir, seed):
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.models.sampling import SamplingProtocol, generate

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir)
    prompts = [c.prompt for c in all_compositions()[:3]]
    protocol = SamplingProtocol(steps=2, guidance_scale=3.0, resolution=32)
    together = generate(pipe, prompts, [seed, 7, 8], protocol, batch_size=3)
    alone = generate(pipe, prompts[:1], [seed], protocol, batch_size=1)
    assert list(together[0].getdata()) == list(alone[0].getdata())


def test_an_untrained_objective_is_saved_as_a_marker_and_a_later_model_replaces_it(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.datasets import DiffusersPipelineDataset, NotTrained

    target = DiffusersPipelineDataset(str(tmp_path / "dro"))
    assert not target.exists()
    target.save(NotTrained("dro", "left out of train.objectives"))
    assert [p.name for p in (tmp_path / "dro").iterdir()] == ["not_trained.json"]  # no copy of the base model
    assert target.exists() and target.load() == NotTrained("dro", "left out of train.objectives")
    good = (tmp_path / "dro/not_trained.json").read_text()
    (tmp_path / "dro/not_trained.json").write_text('{"objective": "dro"')
    with pytest.raises(Exception, match=r"dro/not_trained.json: not a not-trained marker"):
        target.load()
    (tmp_path / "dro/not_trained.json").write_text(good)
    target.save(StableDiffusionXLPipeline.from_pretrained(tiny_pipeline_dir))
    assert not (tmp_path / "dro/not_trained.json").exists()
    assert isinstance(target.load(), StableDiffusionXLPipeline)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dro"]  # no .tmp / .old left behind
