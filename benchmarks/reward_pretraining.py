"""Does contrastive pretraining give the embedded reward model the eyes it lacks? (docs/regime.md, round 16)

PickScore fine-tunes a CLIP that was pretrained on LAION's image–text pairs (Kirstain et al. 2023);
the embedded ``reward_model`` pipeline trains its tiny CLIP from scratch on 5842 pairs and ends at
chance on the held-out labels. This pretrains the same CLIP (``reward_model.size``) on a web-like
corpus first, then fine-tunes it with the pipeline's own recipe (``train_scorer``, PickScore's loss)
and measures:

- the corpus: ``--renders-per-prompt`` jittered renders of every *training* prompt, round-tripped
  through the base model's VAE (so they look like its samples), captioned with the bootstrap's
  web-like mistakes (``base_model.captions``), as the base was pretrained;
- the loss: CLIP's symmetric InfoNCE (Radford et al. 2021) over the batch, duplicate captions
  masked, plus one hard negative caption per image with one attribute changed (NegCLIP, Yuksekgonul
  et al. 2023, "When and why vision-language models behave like bags-of-words"), without which a
  batch rarely asks where a shape is;
- what it learned: for every validation prompt's render, whether the caption scores above every
  caption with one attribute changed (per attribute; chance is 1/#values), before and after the
  fine-tuning;
- what SmPO needs: agreement with the held-out pairs' labels, zero-shot and after fine-tuning, with
  a bootstrap interval over prompts, against the model trained from scratch.

Reads the chain's clean pairs (``kedro run --pipelines data`` first). About 5 min at the defaults:

    .venv/bin/python benchmarks/reward_pretraining.py
    .venv/bin/python benchmarks/reward_pretraining.py --steps 0     # the from-scratch model, for the comparison
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

PAIRS = Path("data/02_intermediate/pairs.parquet")
SHARDS_WORK = Path("data/02_intermediate/pickapic_shards")
BASE = Path("data/01_raw/base_model")
PROMPTS = Path("data/01_raw/prompts")


def _prompts(name: str) -> list[str]:
    return [p for p in (PROMPTS / f"{name}.txt").read_text().splitlines() if p]


def one_changed(prompt: str, attribute: str) -> list[str]:
    """The prompt with ``attribute`` set to each of its other values (a shape colour never the background's)."""
    from smpo_pipeline.world.grammar import COLORS, POSITIONS, SHAPES, SIZES, parse_prompt

    comp = parse_prompt(prompt)
    values = {"position": POSITIONS, "color": COLORS, "shape": SHAPES, "size": SIZES}[attribute]
    others = [v for v in values if v != getattr(comp, attribute) and not (attribute == "color" and v == comp.background)]
    return [replace(comp, **{attribute: v}).prompt for v in others]


def main() -> None:
    import pandas as pd
    import torch
    import torch.nn.functional as F
    import yaml
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    from smpo_pipeline.models.sampling import vae_round_trip
    from smpo_pipeline.params import BaseModelParams, RewardModelParams
    from smpo_pipeline.pipelines.reward_model.nodes import _pair_images
    from smpo_pipeline.rewards.pickscore_training import (
        agreement_interval,
        initial_scorer,
        pair_tensors,
        predict,
        train_scorer,
    )
    from smpo_pipeline.world.captions import MISTAKES, web_caption, web_captions
    from smpo_pipeline.world.render import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="pretraining steps (0: none)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--renders-per-prompt", type=int, default=8)
    parser.add_argument("--no-hard-negatives", action="store_true")
    parser.add_argument("--fine-tune-lr", type=float, default=None, help="default: reward_model.training's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    conf = yaml.safe_load(Path("conf/base/parameters_reward_model.yml").read_text())["reward_model"]
    if args.fine_tune_lr is not None:
        conf["training"]["learning_rate"] = args.fine_tune_lr
    params = RewardModelParams(**conf)
    captions_conf = BaseModelParams(**yaml.safe_load(Path("conf/base/parameters_bootstrap.yml").read_text())["base_model"]).captions
    model, processor = initial_scorer(params)
    length = params.size.max_length

    def tokens(texts):
        return processor.tokenizer(list(texts), padding="max_length", truncation=True, max_length=length,
                                   return_tensors="pt")

    def embed_text(texts):
        t = tokens(texts)
        return F.normalize(model.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask)
                           .pooler_output, dim=-1)

    validation = _prompts("validation")
    probe_pixels = processor.image_processor(images=[render(p, 32, rng=np.random.default_rng(1)) for p in validation],
                                             return_tensors="pt").pixel_values

    @torch.no_grad()
    def probe() -> dict[str, float]:
        model.eval()
        images = F.normalize(model.get_image_features(pixel_values=probe_pixels).pooler_output, dim=-1)
        out = {}
        for attribute in ("position", "color", "shape", "size"):
            hits = [float((embed_text([p, *one_changed(p, attribute)]) @ images[i]).argmax() == 0)
                    for i, p in enumerate(validation)]
            out[attribute] = float(np.mean(hits))
        return out

    pairs = pd.read_parquet(PAIRS)
    train = pairs[pairs.split == "train"].reset_index(drop=True)
    held = pairs[(pairs.split == "validation") & (pairs.label_0 != 0.5)].reset_index(drop=True)
    held_tensors = pair_tensors(processor, *_pair_images(held, SHARDS_WORK), held.caption, held.label_0, length)

    def agreement() -> tuple[float, float, float]:
        prob = predict(model, held_tensors)
        return agreement_interval((prob > 0.5) == (held.label_0.to_numpy() == 1), groups=held.caption.to_numpy())

    if args.steps:
        started = time.time()
        corpus = [p for p in _prompts("train") for _ in range(args.renders_per_prompt)]
        captions, _ = web_captions(corpus, captions_conf.rates(), captions_conf.seed)
        images = [render(p, 32, rng=rng) for p in tqdm(corpus, desc="render corpus", mininterval=2)]
        vae = AutoencoderKL.from_pretrained(BASE / "vae").eval()
        images = [im for i in range(0, len(images), 512) for im in vae_round_trip(vae, images[i:i + 512])]
        pixels = processor.image_processor(images=images, return_tensors="pt").pixel_values
        text = tokens(captions)
        # One hard negative a caption: one mistake of a kind drawn at random (``world.captions``).
        negative = tokens([web_caption(c, {MISTAKES[int(rng.integers(len(MISTAKES)))]: 1.0}, rng)[0]
                           for c in captions])
        caption_id = pd.factorize(pd.Series(captions))[0]
        print(f"corpus: {len(corpus)} round-tripped renders of {len(corpus) // args.renders_per_prompt} training "
              f"prompts ({time.time() - started:.0f} s)")
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
        warmup = min(100, args.steps // 10 + 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
        model.train()
        bar = tqdm(range(args.steps), desc="pretrain CLIP", mininterval=2)
        for step in bar:
            rows = torch.from_numpy(rng.integers(0, len(corpus), args.batch_size))
            image = F.normalize(model.get_image_features(pixel_values=pixels[rows]).pooler_output, dim=-1)
            caption = F.normalize(model.get_text_features(input_ids=text.input_ids[rows],
                                                          attention_mask=text.attention_mask[rows]).pooler_output, dim=-1)
            scale = model.logit_scale.exp()
            ids = caption_id[rows.numpy()]
            same = torch.from_numpy((ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool))
            logits = (scale * image @ caption.T).masked_fill(same, -1e4)  # a duplicate caption is no negative
            target = torch.arange(len(rows))
            text_loss = F.cross_entropy(logits.T, target)
            if not args.no_hard_negatives:
                hard = F.normalize(model.get_text_features(input_ids=negative.input_ids[rows],
                                                           attention_mask=negative.attention_mask[rows]).pooler_output,
                                   dim=-1)
                logits = torch.cat([logits, scale * (image * hard).sum(-1, keepdim=True)], dim=1)
            loss = (F.cross_entropy(logits, target) + text_loss) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        print(f"pretrained {args.steps} steps in {time.time() - started:.0f} s")
        print("  picks the right value on validation renders:", {k: f"{v:.1%}" for k, v in probe().items()})
        print("  held-out label agreement, zero-shot: {:.1%} [{:.1%}, {:.1%}]".format(*agreement()))
    started = time.time()
    train_tensors = pair_tensors(processor, *_pair_images(train, SHARDS_WORK), train.caption, train.label_0, length)
    model, _ = train_scorer(model, train_tensors, params.training, progress=True)
    print(f"fine-tuned on {len(train)} pairs, {params.training.steps} steps in {time.time() - started:.0f} s")
    print("  picks the right value on validation renders:", {k: f"{v:.1%}" for k, v in probe().items()})
    print("  held-out label agreement: {:.1%} [{:.1%}, {:.1%}]".format(*agreement()))


if __name__ == "__main__":
    main()
