"""Nodes of the ``bootstrap`` pipeline: thin adapters from Kedro to ``smpo_pipeline.world`` and
``smpo_pipeline.models``. Heavy imports stay inside the functions (``kedro viz build`` stays fast)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from smpo_pipeline.params import (
    AnnotatorParams,
    BaseModelParams,
    PairsParams,
    RawDataParams,
    UNetTrainingParams,
    WorldParams,
)

log = logging.getLogger(__name__)
ATTRIBUTES = ("background", "color", "position", "size", "shape")
# The generators of the ``model_0``/``model_1`` columns (with "@cfg<guidance>" appended).
BASE_GENERATOR, SECOND_GENERATOR = "tiny-sdxl-base", "tiny-sdxl-recaptioned"


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

    from smpo_pipeline.models.tiny_sdxl import build_vae, count_parameters
    from smpo_pipeline.training.pretraining import train_vae

    w, b = world, base_model
    torch.manual_seed(b.seed)
    vae = build_vae(_spec(w, b))
    v = b.vae
    result = train_vae(vae, prompts_train, w.resolution, v.steps, v.batch_size, v.learning_rate, v.kl_weight, b.seed,
                       cosine_decay=v.cosine_decay, held_out=v.held_out_renders)
    metrics = result.metrics | {"parameters": count_parameters(vae)}
    log.info("VAE: %s", metrics)
    return result.vae, metrics


def _pretrain_config(u: UNetTrainingParams, seed: int, schedule: dict, checkpoint_every: int = 0):
    """``training.pretraining.PretrainConfig`` of a ``UNetTrainingParams`` section."""
    from smpo_pipeline.training.pretraining import PretrainConfig

    return PretrainConfig(
        steps=u.steps, batch_size=u.batch_size, learning_rate=u.learning_rate, warmup_steps=u.warmup_steps,
        grad_clip=u.grad_clip, ema_decay=u.ema_decay, caption_dropout=u.caption_dropout, offset_noise=u.offset_noise,
        renders_per_prompt=u.renders_per_prompt, seed=seed, min_snr_gamma=u.min_snr_gamma,
        cosine_decay=u.cosine_decay, checkpoint_every=checkpoint_every, noise_schedule=schedule)


def train_base_model(vae, tokenizer, prompts_train: list[str], prompts_validation: list[str], world: WorldParams,
                     base_model: BaseModelParams):
    """UNet + both text encoders trained from scratch on renders of the training prompts under
    web-like captions (``base_model.captions``), assembled into a stock SDXL pipeline. With
    ``unet.curve_every`` the EMA is measured on validation prompts along the way."""
    import torch

    from smpo_pipeline.models.tiny_sdxl import (
        assemble_pipeline,
        build_sampling_scheduler,
        build_text_encoders,
        build_unet,
        count_parameters,
        make_noise_schedule,
    )
    from smpo_pipeline.training.pretraining import train_unet_and_text_encoders
    from smpo_pipeline.world.captions import web_captions

    w, b = world, base_model
    spec = _spec(w, b)
    torch.manual_seed(b.seed)
    unet = build_unet(spec)
    text_encoders = build_text_encoders(spec, tokenizer)
    u = b.unet
    rendered = [p for p in prompts_train for _ in range(u.renders_per_prompt)]
    captions, mistakes = web_captions(rendered, b.captions.rates(), b.captions.seed)
    schedule = make_noise_schedule(b.noise_schedule.prediction_type, b.noise_schedule.zero_terminal_snr)
    curve = []

    def measure(step: int, ema) -> None:
        pipe = assemble_pipeline(vae, ema["te1"], ema["te2"], tokenizer, ema["unet"], build_sampling_scheduler(schedule))
        curve.append({"step": step} | _accuracy_of(pipe, prompts_validation[:48], w, b))
        log.info("base model at step %d on 48 validation prompts: %s", step, curve[-1])

    config = _pretrain_config(u, b.seed, schedule, checkpoint_every=u.curve_every)
    result = train_unet_and_text_encoders(vae, unet, text_encoders, tokenizer, prompts_train, w.resolution, config,
                                          captions=captions, on_checkpoint=measure)
    pipe = assemble_pipeline(vae, *result.text_encoders, tokenizer, result.unet, build_sampling_scheduler(schedule))
    metrics = result.metrics | {
        "unet_parameters": count_parameters(result.unet),
        "text_encoder_parameters": sum(count_parameters(t) for t in result.text_encoders),
        "caption_mistake_shares": mistakes,
        "validation_curve": curve,
    }
    log.info("UNet: %s", {k: v for k, v in metrics.items() if k != "validation_curve"})
    return pipe, metrics


def train_second_generator(base_model_pipeline, prompts_train: list[str], world: WorldParams, base_model: BaseModelParams,
                           pairs: PairsParams):
    """The second generator of ``pairs.second_generator``: a copy of the base (UNet and both text
    encoders) trained further on renders of the training prompts under their true captions, the
    base's own recipe otherwise (its noise schedule, Min-SNR-γ, EMA). Without second-generator
    candidates nothing is trained, and a marker is saved rather than a copy of the base."""
    import copy

    from smpo_pipeline.datasets.diffusers_pipeline import NotTrained
    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.training.pretraining import train_unet_and_text_encoders

    g = pairs.second_generator
    if not g.candidates_per_prompt:
        return NotTrained("second_generator", "pairs.second_generator.candidates_per_prompt is 0: the base draws "
                                              "every candidate")
    pipe, u = base_model_pipeline, g.training
    config = _pretrain_config(u, pairs.seed, noise_schedule(pipe))
    result = train_unet_and_text_encoders(
        pipe.vae, copy.deepcopy(pipe.unet), (copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.text_encoder_2)),
        pipe.tokenizer, prompts_train, world.resolution, config)
    log.info("second generator: %s", result.metrics)
    te1, te2 = result.text_encoders
    return type(pipe)(**{**pipe.components, "unet": result.unet, "text_encoder": te1, "text_encoder_2": te2})


def _accuracy_of(pipe, prompts: list[str], world: WorldParams, base_model: BaseModelParams) -> dict:
    """``attribute_accuracy`` of ``pipe``'s images of ``prompts`` (seeds 0, 1, … per image)."""
    from smpo_pipeline.evaluation import prompt_seed_grid
    from smpo_pipeline.models.sampling import SamplingProtocol, generate

    e = base_model.evaluation
    prompts, seeds = prompt_seed_grid(prompts, base_model.evaluation_seeds_per_prompt)
    protocol = SamplingProtocol(e.steps, e.guidance_scale, world.resolution)
    images = generate(pipe, prompts, seeds, protocol, e.batch_size, progress=False)
    return attribute_accuracy(images, prompts)


def attribute_accuracy(images, prompts: list[str]) -> dict[str, Any]:
    """Share of images whose oracle-detected attribute equals the prompt's, per attribute, and the
    mean ``shapes-oracle`` reward."""
    from smpo_pipeline.world.grammar import parse_prompt
    from smpo_pipeline.world.oracle import combine_scores, read_image, score_reading

    hits = dict.fromkeys(ATTRIBUTES, 0)
    rewards = []
    for image, prompt in zip(images, prompts, strict=True):
        reading, comp = read_image(image), parse_prompt(prompt)
        for attribute, right in reading.right(comp).items():
            hits[attribute] += right
        rewards.append(combine_scores(score_reading(reading, comp)))
    n = len(prompts)
    return {"images": n, "accuracy": {a: round(h / n, 4) for a, h in hits.items()},
            "mean_oracle_reward": round(float(np.mean(rewards)), 4)}


def measure_base_model(base_model_pipeline, second_generator, prompts_test: list[str], world: WorldParams,
                       base_model: BaseModelParams, pairs: PairsParams) -> dict:
    """Attribute accuracy of the base model on the test prompts (20 steps), beside the ideal renders'
    and theirs after the VAE's round trip (the ceiling of what the model can draw through its VAE),
    and the second generator's when it draws candidates."""
    from smpo_pipeline.evaluation import prompt_seed_grid
    from smpo_pipeline.models.sampling import SamplingProtocol, generate, vae_round_trip
    from smpo_pipeline.world.render import render

    w, b = world, base_model
    e = b.evaluation
    prompts, seeds = prompt_seed_grid(prompts_test, b.evaluation_seeds_per_prompt)
    protocol = SamplingProtocol(e.steps, e.guidance_scale, w.resolution)
    images = generate(base_model_pipeline, prompts, seeds, protocol, e.batch_size, desc="base model on test prompts")
    rng = np.random.default_rng(w.seed)
    renders = [render(p, w.resolution, rng=rng) for p in prompts]
    report = {
        "protocol": protocol.__dict__ | {"prompt_set": "test", "seeds": f"0..{len(seeds) - 1}"},
        "base_model": attribute_accuracy(images, prompts),
        "ideal_renders": attribute_accuracy(renders, prompts),
        "ideal_renders_through_vae": attribute_accuracy(vae_round_trip(base_model_pipeline.vae, renders), prompts),
    }
    if pairs.second_generator.candidates_per_prompt:
        report["second_generator"] = _accuracy_of(second_generator, prompts_test, w, b)
    log.info("Base model on the test prompts: %s", report["base_model"])
    return report


def sample_candidates(base_model_pipeline, second_generator, prompts_train: list[str], world: WorldParams,
                      pairs: PairsParams):
    """``pairs.candidates_per_prompt`` images per training prompt, each with its own seed and a
    guidance scale drawn from ``pairs.guidance_scales``; ``pairs.second_generator.candidates_per_prompt``
    of them, chosen at random, drawn by the second generator, the rest by the base. The generator
    and its guidance scale name the image's model in the ``model_0``/``model_1`` columns. Images
    are JPEG bytes."""
    import pandas as pd

    from smpo_pipeline.models.sampling import SamplingProtocol, generate
    from smpo_pipeline.pickapic import jpeg_bytes

    w, p = world, pairs
    rng = np.random.default_rng(p.seed)
    k, n = p.candidates_per_prompt, len(prompts_train)
    frame = pd.DataFrame({
        "prompt_index": np.repeat(np.arange(n), k),
        "candidate": np.tile(np.arange(k), n),
        "caption": np.repeat(np.asarray(prompts_train, dtype=object), k),
        "seed": rng.choice(2**31 - 1, size=k * n, replace=False),
        "guidance": rng.choice(np.asarray(p.guidance_scales, dtype=float), size=k * n),
    })
    # Which candidates the second generator draws, per prompt (drawn after the seeds, so a world
    # without it keeps every seed it had).
    second = np.concatenate([rng.permutation(k) < p.second_generator.candidates_per_prompt for _ in range(n)]) \
        if p.second_generator.candidates_per_prompt else np.zeros(k * n, dtype=bool)
    frame["generator"] = np.where(second, SECOND_GENERATOR, BASE_GENERATOR)
    models = {BASE_GENERATOR: base_model_pipeline, SECOND_GENERATOR: second_generator}
    # Generation is grouped by generator and guidance scale (the pipeline takes one per call); each
    # image still depends only on its own seed.
    jpegs = pd.Series(index=frame.index, dtype=object)
    for (name, g), group in frame.groupby(["generator", "guidance"]):
        protocol = SamplingProtocol(p.steps, float(g), w.resolution)
        images = generate(models[name], list(group.caption), [int(s) for s in group.seed], protocol,
                          p.batch_size, desc=f"candidates of {name} at guidance {g:g}")
        jpegs[group.index] = [jpeg_bytes(image, p.jpeg_quality) for image in images]
    return frame.assign(jpg=jpegs)


def label_pairs_with_annotators(candidates, annotators: AnnotatorParams, pairs: PairsParams):
    """``pairs.pairs_per_prompt`` pairs of each prompt's candidates, each judged by one annotator
    drawn from the population (on the stored JPEGs, as a person would see them), written as
    Pick-a-Pic v2 shards. Also returns how often the annotators disagree with the oracle and how
    often they declare a tie."""


    from smpo_pipeline.ingest.images import decode_rgb
    from smpo_pipeline.pickapic import to_table
    from smpo_pipeline.world.annotators import AnnotatorPopulation
    from smpo_pipeline.world.labelling import candidate_pairs, label_pairs
    from smpo_pipeline.world.oracle import read_image

    a, p = annotators, pairs
    population = AnnotatorPopulation(
        size=a.population_size, seed=a.seed, weight_concentration=a.weight_concentration,
        taste_scale=a.taste_scale, rationality_median=a.rationality_median,
        max_tie_margin=a.max_tie_margin, zipf_exponent=a.zipf_exponent,
    )
    by_prompt = [group.sort_values("candidate") for _, group in candidates.groupby("prompt_index", sort=True)]
    captions = [group.caption.iloc[0] for group in by_prompt]
    images = [list(group.jpg) for group in by_prompt]
    readings = [[read_image(decode_rgb(b)) for b in row] for row in images]
    generators = [[f"{m}@cfg{g:g}" for m, g in zip(group.generator, group.guidance, strict=True)]
                  for group in by_prompt]
    rng = np.random.default_rng(a.seed)
    chosen = candidate_pairs(len(by_prompt), p.candidates_per_prompt, p.pairs_per_prompt, rng)
    rows, summary = label_pairs(captions, readings, images, generators, chosen, population, rng, namespace=a.seed)
    n = len(chosen)
    shards = [to_table({k: v[s : s + p.rows_per_shard] for k, v in rows.items()})
              for s in range(0, n, p.rows_per_shard)]
    summary = summary.as_dict() | {"shards": len(shards), "images": len(candidates),
                                   "second_generator": _second_generator_share(rows)}
    log.info("Annotations: %s", summary)
    return shards, summary


def _second_generator_share(rows: dict[str, list]) -> dict[str, float | int]:
    """Of the pairs that set the second generator against the base: how many, and the share of
    their decided labels the second generator's image won."""
    mixed = won = decided = 0
    for m0, m1, l0, l1 in zip(rows["model_0"], rows["model_1"], rows["label_0"], rows["label_1"], strict=True):
        first, other = m0.startswith(SECOND_GENERATOR), m1.startswith(SECOND_GENERATOR)
        if first == other:
            continue
        mixed += 1
        if l0 != l1:
            decided += 1
            won += (l0 > l1) == first
    return {"mixed_pairs": mixed, "win_share": round(won / decided, 4) if decided else None}


def write_raw_manifest(base_model, pickapic_raw, prompts_train: list[str], prompts_validation: list[str],
                       prompts_test: list[str], raw_data: RawDataParams) -> dict:
    """``MANIFEST.json`` of everything the bootstrap wrote under ``raw_data.root`` (the files the
    repository ships). Its inputs are what it hashes: it runs after they are saved."""
    from smpo_pipeline.manifest import build_manifest

    files = build_manifest(raw_data.root)
    log.info("Raw inputs: %d files, %.1f MiB", len(files), sum(f["bytes"] for f in files.values()) / 2**20)
    return {"root": raw_data.root, "files": files}


def write_bootstrap_report(vae_metrics: dict, unet_metrics: dict, base_model_accuracy: dict,
                           annotation_summary: dict) -> dict:
    """One JSON report (``reports/bootstrap.json``), also printed as a short table."""
    report = {"vae": vae_metrics, "unet": unet_metrics, "test_prompts": base_model_accuracy,
              "annotations": annotation_summary}
    acc = base_model_accuracy["base_model"]["accuracy"]
    shares = unet_metrics.get("caption_mistake_shares", {})
    cause = {"background": "swap_colors", "color": "swap_colors + color", "position": "position", "size": "size",
             "shape": "shape"}
    lines = [
        "Base model on the test prompts (20 steps): "
        + ", ".join(f"{a} {acc[a]:.0%}" for a in ATTRIBUTES)
        + f"; mean shapes-oracle reward {base_model_accuracy['base_model']['mean_oracle_reward']:.3f}"
        + f" (ideal renders {base_model_accuracy['ideal_renders']['mean_oracle_reward']:.3f}"
        + (f", through the VAE {through['mean_oracle_reward']:.3f})"
           if (through := base_model_accuracy.get("ideal_renders_through_vae")) else ")"),
        "Captions it was pretrained on, share with each mistake: "
        + ", ".join(f"{kind} {share:.0%}" for kind, share in shares.items())
        + " (" + ", ".join(f"{a} ← {c}" for a, c in cause.items()) + ")",
        f"Annotators: ties {annotation_summary['tie_share']:.1%} of pairs, disagree with the oracle on "
        f"{annotation_summary['disagreement_with_oracle']:.1%} of the non-tie pairs",
    ]
    if second := base_model_accuracy.get("second_generator"):
        mixed = annotation_summary["second_generator"]
        lines.append(f"Second generator on the test prompts: mean shapes-oracle reward {second['mean_oracle_reward']:.3f}; "
                     f"it wins {mixed['win_share']:.0%} of the decided labels of the {mixed['mixed_pairs']} pairs "
                     "that set it against the base")
    for line in lines:
        print(line)  # noqa: T201 - the figures the bootstrap is judged by, on the console
        log.info(line)
    return report
