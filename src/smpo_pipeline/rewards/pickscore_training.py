"""Training a PickScore-style reward model on Pick-a-Pic-format preference pairs (pure torch and
transformers; no Kedro).

PickScore (Kirstain et al. 2023, "Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image
Generation"; yuvalkirstain/PickScore ``trainer/criterions/clip_criterion.py``) is a CLIP model whose
score of image x for prompt c is ``s(x, c) = logit_scale · cos(E_image(x), E_text(c))``. For a pair,
the two scores go through a softmax and the loss is the cross-entropy against the annotators' choice
read as a distribution: (1, 0), (0, 1), or (½, ½) for a tie. PickScore fine-tunes CLIP-H; here the
CLIP model is any ``CLIPModel`` — on the embedded world a tiny one built from config
(``build_scorer``), in the ``sdxl`` profile a checkpoint the user points at.

The saved directory is a stock ``CLIPModel`` + ``CLIPProcessor`` (``save_pretrained``), which the
``pickscore`` reward model (``rewards.models.ClipReward``) loads unchanged and scores by the raw
cosine, as SmPO uses PickScore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from smpo_pipeline.params import (  # the sizes and settings, validated
    RewardModelParams,
    ScorerSizeParams,
    ScorerTrainingParams,
)


def build_scorer(tokenizer, size: ScorerSizeParams):
    """A randomly initialised ``CLIPModel`` and its ``CLIPProcessor`` (the given tokenizer, an image
    processor that keeps the images at ``size.image_size``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text = {"vocab_size": len(tokenizer), "hidden_size": size.hidden_size, "intermediate_size": 4 * size.hidden_size,
            "num_hidden_layers": size.layers, "num_attention_heads": size.heads,
            "max_position_embeddings": size.max_length, "projection_dim": size.projection_dim,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    vision = {"image_size": size.image_size, "patch_size": size.patch_size, "hidden_size": size.hidden_size,
              "intermediate_size": 4 * size.hidden_size, "num_hidden_layers": size.layers,
              "num_attention_heads": size.heads, "projection_dim": size.projection_dim}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim)
    images = CLIPImageProcessor(size={"shortest_edge": size.image_size},
                                crop_size={"height": size.image_size, "width": size.image_size})
    return CLIPModel(config), CLIPProcessor(image_processor=images, tokenizer=tokenizer)


@dataclass
class PairTensors:
    """Preprocessed pairs: both images' pixels, the caption's tokens, the label of image 0."""

    pixels_0: torch.Tensor  # [N, 3, S, S]
    pixels_1: torch.Tensor
    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor
    label_0: torch.Tensor  # [N]: 1, 0 or 0.5 (tie)

    def __len__(self) -> int:
        return len(self.label_0)

    def take(self, rows) -> PairTensors:
        return PairTensors(*(t[rows] for t in (self.pixels_0, self.pixels_1, self.input_ids, self.attention_mask,
                                               self.label_0)))


def pair_tensors(processor, images_0, images_1, captions, label_0, max_length: int) -> PairTensors:
    pixels = processor.image_processor(images=list(images_0) + list(images_1), return_tensors="pt").pixel_values
    text = processor.tokenizer(list(captions), padding="max_length", truncation=True, max_length=max_length,
                               return_tensors="pt")
    n = len(captions)
    return PairTensors(pixels[:n], pixels[n:], text.input_ids, text.attention_mask,
                       torch.as_tensor(np.asarray(label_0, dtype=np.float32)))


def initial_scorer(reward_model: RewardModelParams):
    """The model a run starts from and its processor: the CLIP checkpoint ``reward_model.init``
    (PickScore fine-tunes CLIP-H), or one built from ``reward_model.size`` with the training seed,
    so the same settings give the same initial weights (and the same run id)."""
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    if reward_model.init is not None:
        return CLIPModel.from_pretrained(reward_model.init), CLIPProcessor.from_pretrained(reward_model.init)
    torch.manual_seed(reward_model.training.seed)
    return build_scorer(CLIPTokenizer.from_pretrained(reward_model.tokenizer), reward_model.size)


def scorer_run_id(tensors: PairTensors, model, training: ScorerTrainingParams) -> str:
    """A digest of everything a run reads: the preprocessed pairs (pixels, tokens, labels), the
    initial weights, every training setting and this module's code (its checkpoints' folder)."""
    from smpo_pipeline.keys import code_digest, digest, module_fingerprint, tensors_digest

    data = tensors_digest(tensors.pixels_0, tensors.pixels_1, tensors.input_ids, tensors.attention_mask, tensors.label_0)
    return digest(data, module_fingerprint(model), training.model_dump(),
                  code_digest("smpo_pipeline.rewards.pickscore_training"), length=12)


def pair_logits(model, batch: PairTensors) -> torch.Tensor:
    """[B, 2]: ``logit_scale · cos(image_k, caption)`` of both images of every pair."""
    # transformers 5 returns the projected embedding as the output's pooler_output.
    text = model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask).pooler_output
    images = model.get_image_features(pixel_values=torch.cat([batch.pixels_0, batch.pixels_1])).pooler_output
    text, images = F.normalize(text, dim=-1), F.normalize(images, dim=-1)
    n = len(batch)
    cosine = torch.stack([(images[:n] * text).sum(-1), (images[n:] * text).sum(-1)], dim=1)
    return model.logit_scale.exp() * cosine


def preference_loss(logits: torch.Tensor, label_0: torch.Tensor) -> torch.Tensor:
    """PickScore's loss: cross-entropy of the softmax over the pair against (label_0, 1 − label_0)."""
    target = torch.stack([label_0, 1 - label_0], dim=1)
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def train_scorer(model, train: PairTensors, config: ScorerTrainingParams, checkpoint_dir: Path | None = None,
                 checkpoint_every: int = 100, progress: bool = True) -> tuple[object, list[float]]:
    """Fine-tune ``model`` on ``train`` with AdamW (warm-up, then cosine decay to 0); returns the
    model (in eval mode) and the loss of every step run now. With ``checkpoint_dir`` it saves every
    ``checkpoint_every`` steps (``training.checkpoints``: weights, optimiser, schedule, generators)
    and a killed run resumes from the latest checkpoint on the same loss curve."""
    from tqdm.auto import tqdm

    from smpo_pipeline.training import checkpoints

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)  # the batches' rows
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    first = 0
    if checkpoint_dir is not None and (found := checkpoints.latest(checkpoint_dir)) is not None:
        first, _, _ = checkpoints.restore(found, model, optimizer, schedule, None, generator, rng)
    model.train()
    losses = []
    bar = tqdm(range(first, config.steps), initial=first, total=config.steps, desc="train reward model", unit="step",
               mininterval=2, disable=not progress)
    for step in bar:
        rows = torch.from_numpy(rng.integers(0, len(train), config.batch_size))
        loss = preference_loss(pair_logits(model, train.take(rows)), train.label_0[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP clamps its temperature at 100 (Radford et al. 2021)
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.item()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        done = step + 1
        if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == config.steps):
            checkpoints.save(checkpoint_dir, done, model, optimizer, schedule, None, generator, rng, keep_last=1)
    return model.eval(), losses


@torch.no_grad()
def image_scores(model, pairs: PairTensors, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(score of image 0, score of image 1) of every pair: the raw cosine of image and caption, as
    the ``pickscore`` reward model scores (``rewards.models.ClipReward``) and SmPO smooths with it."""
    model.eval()
    scale = float(model.logit_scale.exp())
    out = torch.cat([pair_logits(model, pairs.take(slice(i, i + batch_size))) / scale
                     for i in range(0, len(pairs), batch_size)]).numpy().astype(np.float64)
    return out[:, 0], out[:, 1]


@torch.no_grad()
def predict(model, pairs: PairTensors, batch_size: int = 256) -> np.ndarray:
    """P(image 0 ≻ image 1) of every pair: the softmax of the two scores."""
    model.eval()
    out = [pair_logits(model, pairs.take(slice(i, i + batch_size))).softmax(dim=1)[:, 0]
           for i in range(0, len(pairs), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def agreement_interval(agree: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0,
                       groups: np.ndarray | None = None):
    """(share, low, high): the share of ``agree`` (booleans) with a percentile bootstrap interval.

    ``groups`` (one label per pair, e.g. its caption) resamples whole groups instead of pairs: the
    pairs of one prompt share their candidates, so they are not independent, and resampling them
    one by one would make the interval too narrow."""
    agree = np.asarray(agree, dtype=float)
    if len(agree) == 0:
        raise ValueError("agreement of no pairs: the held-out split has no decided pair")
    rng = np.random.default_rng(seed)
    if groups is None:
        boot = agree[rng.integers(0, len(agree), size=(samples, len(agree)))].mean(axis=1)
    else:
        if len(groups) != len(agree):
            raise ValueError(f"agreement of {len(agree)} pairs, but {len(groups)} group labels")
        _, which = np.unique(np.asarray(groups), return_inverse=True)
        hits, sizes = np.bincount(which, weights=agree), np.bincount(which).astype(float)
        drawn = rng.integers(0, len(sizes), size=(samples, len(sizes)))
        boot = hits[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(agree.mean()), float(low), float(high)


def calibration(prob_0: np.ndarray, label_0: np.ndarray, bins: int = 10) -> dict:
    """How well P(image 0 ≻ image 1) matches the annotators' choices: log loss and Brier score
    against the label distribution (ties ½), and the expected calibration error over ``bins`` equal
    bins of the predicted probability, with each bin's mean prediction and observed share."""
    p, y = np.clip(np.asarray(prob_0, float), 1e-7, 1 - 1e-7), np.asarray(label_0, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            predicted, observed = float(p[inside].mean()), float(y[inside].mean())
            ece += inside.mean() * abs(predicted - observed)
            table.append({"bin": [round(edges[b], 2), round(edges[b + 1], 2)], "pairs": int(inside.sum()),
                          "predicted": round(predicted, 4), "observed": round(observed, 4)})
    return {"log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
            "brier": float(((p - y) ** 2).mean()), "ece": float(ece), "bins": table}
