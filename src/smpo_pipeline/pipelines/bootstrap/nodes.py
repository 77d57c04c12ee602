"""Nodes of the ``bootstrap`` pipeline: thin adapters from Kedro to ``smpo_pipeline.world`` and
``smpo_pipeline.models``. Heavy imports stay inside the functions (``kedro viz build`` stays fast)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from smpo_pipeline.params import AnnotatorParams, BaseModelParams, PairsParams, WorldParams

log = logging.getLogger(__name__)
ATTRIBUTES = ("background", "color", "position", "size", "shape")


def split_prompt_sets(world: WorldParams) -> tuple[list[str], list[str], list[str]]:
    """The seeded train / validation / test split of the grammar's compositions."""
    from smpo_pipeline.world.grammar import split_compositions

    w = world
    split = split_compositions(w.seed, w.validation_share, w.test_share)
    train = [c.prompt for c in split["train"]]
    if w.max_train_prompts:
        train = list(np.random.default_rng(w.seed).choice(train, w.max_train_prompts, replace=False))
    return train, [c.prompt for c in split["validation"]], [c.prompt for c in split["test"]]


def train_prompt_tokenizer(base_model: BaseModelParams):
    """A CLIP BPE tokenizer learned on the whole grammar (its words, not its compositions)."""
    from smpo_pipeline.models.tokenizer import train_clip_tokenizer
    from smpo_pipeline.world.grammar import all_compositions

    b = base_model
    corpus = [c.prompt for c in all_compositions()]
    return train_clip_tokenizer(corpus, b.size.tokenizer_vocab_size, b.size.max_length)


def _spec(world: WorldParams, base: BaseModelParams):
    from smpo_pipeline.models.tiny_sdxl import TinySDXLSpec

    s = base.size
    return TinySDXLSpec(
        resolution=world.resolution,
        vae_channels=s.vae_channels,
        unet_channels=s.unet_channels,
        attention_heads=s.attention_heads,
        cross_attention_dim=2 * s.text_hidden_size,
        text_hidden_size=s.text_hidden_size,
        text_layers=s.text_layers,
        projection_dim=s.text_hidden_size,
        max_length=s.max_length,
    )


def train_base_vae(prompts_train: list[str], world: WorldParams, base_model: BaseModelParams):
    """A small ``AutoencoderKL`` trained on jittered renders of the training prompts."""
    import torch

    from smpo_pipeline.models.base_training import train_vae
    from smpo_pipeline.models.tiny_sdxl import build_vae, count_parameters

    w, b = world, base_model
    torch.manual_seed(b.seed)
    vae = build_vae(_spec(w, b))
    v = b.vae
    result = train_vae(vae, prompts_train, w.resolution, v.steps, v.batch_size, v.learning_rate, v.kl_weight, b.seed)
    metrics = result.metrics | {"parameters": count_parameters(vae)}
    log.info("VAE: %s", metrics)
    return result.vae, metrics


def train_base_model(vae, tokenizer, prompts_train: list[str], world: WorldParams, base_model: BaseModelParams):
    """UNet + both text encoders trained from scratch, assembled into a stock SDXL pipeline."""
    import torch

    from smpo_pipeline.models.base_training import train_unet_and_text_encoders
    from smpo_pipeline.models.tiny_sdxl import assemble_pipeline, build_text_encoders, build_unet, count_parameters

    w, b = world, base_model
    spec = _spec(w, b)
    torch.manual_seed(b.seed)
    unet = build_unet(spec)
    text_encoders = build_text_encoders(spec, tokenizer)
    u = b.unet
    result = train_unet_and_text_encoders(
        vae, unet, text_encoders, tokenizer, prompts_train, w.resolution,
        steps=u.steps, batch_size=u.batch_size, learning_rate=u.learning_rate,
        warmup_steps=u.warmup_steps, grad_clip=u.grad_clip, ema_decay=u.ema_decay,
        caption_dropout=u.caption_dropout, offset_noise=u.offset_noise,
        renders_per_prompt=u.renders_per_prompt, seed=b.seed, min_snr_gamma=u.min_snr_gamma,
    )
    pipe = assemble_pipeline(vae, *result.text_encoders, tokenizer, result.unet)
    metrics = result.metrics | {
        "unet_parameters": count_parameters(result.unet),
        "text_encoder_parameters": sum(count_parameters(t) for t in result.text_encoders),
    }
    log.info("UNet: %s", metrics)
    return pipe, metrics


def attribute_accuracy(images, prompts: list[str]) -> dict[str, Any]:
    """Share of images whose oracle-detected attribute equals the prompt's, per attribute, and the
    mean ``shapes-oracle`` reward."""
    from smpo_pipeline.world.grammar import parse_prompt
    from smpo_pipeline.world.oracle import combine_scores, read_image, score_reading

    hits = dict.fromkeys(ATTRIBUTES, 0)
    rewards = []
    for image, prompt in zip(images, prompts, strict=True):
        reading, comp = read_image(image), parse_prompt(prompt)
        for attribute, value in reading.detected.items():
            hits[attribute] += value == getattr(comp, attribute)
        rewards.append(combine_scores(score_reading(reading, comp)))
    n = len(prompts)
    return {"images": n, "accuracy": {a: round(h / n, 4) for a, h in hits.items()},
            "mean_oracle_reward": round(float(np.mean(rewards)), 4)}


def measure_base_model(base_model_pipeline, prompts_test: list[str], world: WorldParams, base_model: BaseModelParams) -> dict:
    """Attribute accuracy of the base model on the test prompts (20 steps), beside the ideal renders'."""
    from smpo_pipeline.models.sampling import SamplingProtocol, generate
    from smpo_pipeline.world.render import render

    w, b = world, base_model
    e = b.evaluation
    prompts = [p for p in prompts_test for _ in range(b.evaluation_seeds_per_prompt)]
    seeds = list(range(len(prompts)))
    protocol = SamplingProtocol(e.steps, e.guidance_scale, w.resolution)
    images = generate(base_model_pipeline, prompts, seeds, protocol, e.batch_size, desc="base model on test prompts")
    rng = np.random.default_rng(w.seed)
    ideal = attribute_accuracy([render(p, w.resolution, rng=rng) for p in prompts], prompts)
    report = {
        "protocol": protocol.__dict__ | {"prompt_set": "test", "seeds": f"0..{len(seeds) - 1}"},
        "base_model": attribute_accuracy(images, prompts),
        "ideal_renders": ideal,
    }
    log.info("Base model on the test prompts: %s", report["base_model"])
    return report


def sample_candidate_pairs(base_model_pipeline, prompts_train: list[str], world: WorldParams, pairs: PairsParams):
    """Two base-model images per training prompt, with different seeds and guidance scales, so
    that the two images of a pair differ the way two Pick-a-Pic generations do."""
    import pandas as pd

    from smpo_pipeline.models.sampling import SamplingProtocol, generate
    from smpo_pipeline.pickapic import jpeg_bytes

    w, p = world, pairs
    rng = np.random.default_rng(p.seed)
    captions = [c for c in prompts_train for _ in range(p.pairs_per_prompt)]
    n = len(captions)
    seeds = rng.choice(2**31 - 1, size=2 * n, replace=False).reshape(n, 2)
    guidance = rng.choice(np.asarray(p.guidance_scales, dtype=float), size=(n, 2))
    # Generation is grouped by guidance scale (the pipeline takes one per call); each image still
    # depends only on its own seed.
    images: dict[tuple[int, int], bytes] = {}
    for g in sorted(set(guidance.ravel())):
        slots = [(i, j) for i in range(n) for j in range(2) if guidance[i, j] == g]
        protocol = SamplingProtocol(p.steps, float(g), w.resolution)
        generated = generate(base_model_pipeline, [captions[i] for i, _ in slots],
                             [int(seeds[i, j]) for i, j in slots], protocol, p.batch_size,
                             desc=f"pairs at guidance {g:g}")
        images.update({slot: jpeg_bytes(img, p.jpeg_quality) for slot, img in zip(slots, generated, strict=True)})
    return pd.DataFrame({
        "caption": captions,
        "jpg_0": [images[i, 0] for i in range(n)],
        "jpg_1": [images[i, 1] for i in range(n)],
        "seed_0": seeds[:, 0], "seed_1": seeds[:, 1],
        "guidance_0": guidance[:, 0], "guidance_1": guidance[:, 1],
    })


def label_pairs_with_annotators(candidate_pairs, annotators: AnnotatorParams, pairs: PairsParams):
    """Each pair is judged by one annotator drawn from the population (on the stored JPEGs, as a
    person would see them) and written as Pick-a-Pic v2 shards. Also returns how often the
    annotators disagree with the oracle and how often they declare a tie."""
    import io

    from PIL import Image

    from smpo_pipeline.pickapic import to_table
    from smpo_pipeline.world.annotators import TIE, AnnotatorPopulation
    from smpo_pipeline.world.oracle import combine_scores, read_image, score_reading

    a, p = annotators, pairs
    population = AnnotatorPopulation(
        size=a.population_size, seed=a.seed, weight_concentration=a.weight_concentration,
        taste_scale=a.taste_scale, rationality_median=a.rationality_median,
        max_tie_margin=a.max_tie_margin, zipf_exponent=a.zipf_exponent,
    )
    rng = np.random.default_rng(a.seed)
    uid = uuid.UUID(int=a.seed)
    counts = candidate_pairs["caption"].value_counts()
    start = datetime(2023, 4, 1)
    rows: dict[str, list] = {name: [] for name in (
        "are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
        "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1",
        "model_0", "model_1", "ranking_id", "user_id", "num_example_per_prompt", "__index_level_0__")}
    ties = disagreements = decided = 0
    for i, pair in enumerate(candidate_pairs.itertuples(index=False)):
        readings = [read_image(Image.open(io.BytesIO(b)).convert("RGB")) for b in (pair.jpg_0, pair.jpg_1)]
        annotator = population.draw(rng)
        label = annotator.choose(readings[0], readings[1], pair.caption, rng)
        oracle = [combine_scores(score_reading(r, pair.caption)) for r in readings]
        uids = [str(uuid.uuid5(uid, f"{i}-{k}")) for k in (0, 1)]
        if label == TIE:
            ties += 1
        elif oracle[0] != oracle[1]:
            decided += 1
            disagreements += (label[0] > label[1]) != (oracle[0] > oracle[1])
        row = {
            "are_different": pair.jpg_0 != pair.jpg_1,
            "best_image_uid": "" if label == TIE else uids[0 if label[0] > label[1] else 1],
            "caption": pair.caption,
            "created_at": start + timedelta(seconds=37 * i),
            "has_label": True,
            "image_0_uid": uids[0], "image_1_uid": uids[1],
            "image_0_url": f"embedded://shapes/{uids[0]}.jpg", "image_1_url": f"embedded://shapes/{uids[1]}.jpg",
            "jpg_0": pair.jpg_0, "jpg_1": pair.jpg_1,
            "label_0": label[0], "label_1": label[1],
            "model_0": f"tiny-sdxl-base@cfg{pair.guidance_0:g}", "model_1": f"tiny-sdxl-base@cfg{pair.guidance_1:g}",
            "ranking_id": i, "user_id": annotator.user_id,
            "num_example_per_prompt": int(counts[pair.caption]),
            "__index_level_0__": i,
        }
        for key, value in row.items():
            rows[key].append(value)
    n = len(candidate_pairs)
    shards = [to_table({k: v[s : s + p.rows_per_shard] for k, v in rows.items()})
              for s in range(0, n, p.rows_per_shard)]
    summary = {
        "pairs": n,
        "shards": len(shards),
        "annotators": len(set(rows["user_id"])),
        "tie_share": round(ties / n, 4),
        "disagreement_with_oracle": round(disagreements / max(decided, 1), 4),
        "non_tie_pairs_compared": decided,
    }
    log.info("Annotations: %s", summary)
    return shards, summary


def write_bootstrap_report(vae_metrics: dict, unet_metrics: dict, base_model_accuracy: dict,
                           annotation_summary: dict) -> dict:
    """One JSON report (``reports/bootstrap.json``), also printed as a short table."""
    report = {"vae": vae_metrics, "unet": unet_metrics, "test_prompts": base_model_accuracy,
              "annotations": annotation_summary}
    acc = base_model_accuracy["base_model"]["accuracy"]
    lines = [
        "Base model on the test prompts (20 steps): "
        + ", ".join(f"{a} {acc[a]:.0%}" for a in ATTRIBUTES)
        + f"; mean shapes-oracle reward {base_model_accuracy['base_model']['mean_oracle_reward']:.3f}"
        + f" (ideal renders {base_model_accuracy['ideal_renders']['mean_oracle_reward']:.3f})",
        f"Annotators: ties {annotation_summary['tie_share']:.1%} of pairs, disagree with the oracle on "
        f"{annotation_summary['disagreement_with_oracle']:.1%} of the non-tie pairs",
    ]
    for line in lines:
        print(line)  # noqa: T201 - the figures the bootstrap is judged by, on the console
        log.info(line)
    return report
