"""Nodes of the ``reward_model`` pipeline: thin adapters over ``smpo_pipeline.rewards.pickscore_training``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smpo_pipeline.params import DataParams, RewardModelParams

log = logging.getLogger(__name__)


def _pair_images(pairs, images_dir: Path):
    """(images 0, images 1) of every pair, decoded to RGB once."""


    from smpo_pipeline.ingest.images import decode_rgb, pair_image_bytes

    data = pair_image_bytes(pairs, images_dir)
    return [decode_rgb(data[u]) for u in pairs.image_0_uid], [decode_rgb(data[u]) for u in pairs.image_1_uid]


def train_reward_model(clean_pairs, reward_model: RewardModelParams, data: DataParams):
    """PickScore's recipe on the *train* split of the clean pairs: (the model and its processor,
    a summary). A re-run with the same pairs and settings finds its finished run and trains
    nothing; a killed run resumes from its latest checkpoint."""
    from smpo_pipeline.datasets import NotTrained
    from smpo_pipeline.keys import train_pairs_digest
    from smpo_pipeline.rewards.pickscore_training import (
        initial_scorer,
        pair_tensors,
        scorer_run_id,
        train_scorer,
    )
    from smpo_pipeline.training.checkpoints import latest

    if not reward_model.train:
        log.info("reward_model.train is false: no reward model trained")
        return NotTrained("reward_model", "reward_model.train is false"), {"trained": False}
    model, processor = initial_scorer(reward_model)
    train = clean_pairs[clean_pairs.split == "train"].reset_index(drop=True)
    tensors = pair_tensors(processor, *_pair_images(train, Path(data.work_dir)), train.caption, train.label_0,
                           reward_model.size.max_length)
    run_id = scorer_run_id(tensors, model, reward_model.training)
    checkpoint_dir = Path(reward_model.checkpoint_root) / run_id
    found = latest(checkpoint_dir)
    done = int(found.name.split("-")[1]) if found else 0
    steps = reward_model.training.steps
    reuse = "finished" if done >= steps else (f"resumed at step {done}" if done else "new")
    log.info("reward model: %s run %s (%d of %d steps done)",
             {"new": "starting", "finished": "reusing the finished"}.get(reuse, "resuming"), run_id, done, steps)
    model, losses = train_scorer(model, tensors, reward_model.training, checkpoint_dir, reward_model.checkpoint_every)
    summary = {"trained": True, "run_id": run_id, "reuse": reuse, "train_pairs": len(train),
               "train_pairs_digest": train_pairs_digest(clean_pairs), "steps": steps,
               "steps_run_now": len(losses), "init": reward_model.init or "built from reward_model.size",
               "parameters": sum(p.numel() for p in model.parameters()),
               "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None}
    return {"model": model, "processor": processor}, summary


def measure_reward_model(reward_model, training: dict, clean_pairs, params: RewardModelParams, data: DataParams):
    """The learned model on the held-out (validation) pairs: its agreement with the annotators'
    labels, with an interval, and its calibration; beside it the reference reward model's (the
    embedded world's shapes-oracle) agreement on the same pairs, how often the two order a pair
    alike, and how their margins correlate."""
    from smpo_pipeline.datasets import NotTrained
    from smpo_pipeline.rewards.pickscore_training import (
        agreement_interval,
        calibration,
        pair_tensors,
        predict,
    )

    if isinstance(reward_model, NotTrained):
        return training | {"reason": reward_model.reason}, _figure(None, None, None)
    held_out = clean_pairs[clean_pairs.split == "validation"].reset_index(drop=True)
    images = _pair_images(held_out, Path(data.work_dir))
    tensors = pair_tensors(reward_model["processor"], *images, held_out.caption, held_out.label_0, params.size.max_length)
    prob = predict(reward_model["model"], tensors)
    label = held_out.label_0.to_numpy(dtype=float)
    decided = label != 0.5
    captions = held_out.caption.to_numpy()

    def interval(agree, rows=slice(None)) -> dict:  # resamples prompts, whose pairs share candidates
        return dict(zip(("share", "low", "high"), agreement_interval(
            agree, params.bootstrap_samples, groups=captions[rows]), strict=True))

    report = training | {
        "held_out_pairs": len(held_out), "decided_pairs": int(decided.sum()),
        "label_agreement": interval((prob[decided] > 0.5) == (label[decided] == 1), decided),
        "calibration": calibration(prob, label),
    }
    reference = None
    if params.reference_model is not None:
        reference = _reference_margins(held_out, images, params.reference_model)
        learned_margin = np.log(prob / (1 - prob))  # = logit_scale · (cos_0 − cos_1)
        report["reference"] = {
            "model": params.reference_model,
            "label_agreement": interval((reference[decided] > 0) == (label[decided] == 1), decided),
            "order_agreement": interval((learned_margin > 0) == (reference > 0)),
            "margin_correlation": round(float(np.corrcoef(learned_margin, reference)[0, 1]), 4),
        }
    log.info("Reward model: agrees with the held-out labels on %.1f%% [%.1f, %.1f] of %d pairs%s",
             *(100 * report["label_agreement"][k] for k in ("share", "low", "high")), int(decided.sum()),
             f"; {params.reference_model}: {100 * report['reference']['label_agreement']['share']:.1f}%"
             if reference is not None else "")
    return report, _figure(report, prob, reference)


def _reference_margins(pairs, images, name: str) -> np.ndarray:
    """score(image 0) − score(image 1) of every pair by the reference reward model."""
    from smpo_pipeline.rewards import build_reward_model

    model = build_reward_model(name)
    return model.score(images[0], list(pairs.caption)) - model.score(images[1], list(pairs.caption))


def _figure(report: dict | None, prob, reference):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if report is None:
        left.text(0.5, 0.5, "no reward model trained", ha="center")
        return fig
    bins = report["calibration"]["bins"]
    left.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    left.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o")
    acc = report["label_agreement"]
    left.set(xlabel="predicted P(image 0 preferred)", ylabel="share of pairs the annotators chose image 0",
             title=f"held-out pairs: agreement {acc['share']:.1%} [{acc['low']:.1%}, {acc['high']:.1%}], "
                   f"ECE {report['calibration']['ece']:.3f}")
    left.title.set_fontsize(9)
    if reference is not None:
        right.scatter(reference, np.log(prob / (1 - prob)), s=4, alpha=0.4)
        right.axhline(0, color="grey", lw=0.8)
        right.axvline(0, color="grey", lw=0.8)
        ref = report["reference"]
        right.set(xlabel=f"{ref['model']} margin (image 0 − image 1)", ylabel="learned margin (logit)",
                  title=f"order agreement {ref['order_agreement']['share']:.1%}, correlation {ref['margin_correlation']:.2f}")
        right.title.set_fontsize(9)
    fig.tight_layout()
    return fig
