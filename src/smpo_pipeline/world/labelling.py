"""Labelling candidate images the way Pick-a-Pic v2 was collected: a user sees two images of one
caption and picks one (or declares a tie). Here the users are the simulated annotators.

Pure numpy; the caller turns the rows into Pick-a-Pic shards (``smpo_pipeline.pickapic``).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from smpo_pipeline.keys import content_uid
from smpo_pipeline.world.annotators import TIE, Annotator, AnnotatorPopulation
from smpo_pipeline.world.oracle import OracleReading, combine_scores, score_reading


def candidate_pairs(n_prompts: int, candidates: int, pairs_per_prompt: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(prompt, candidate a, candidate b) for ``pairs_per_prompt`` distinct pairs of each prompt's
    ``candidates`` images, drawn at random (all of them when it asks for every pair)."""
    every = list(itertools.combinations(range(candidates), 2))
    out = []
    for i in range(n_prompts):
        picks = rng.permutation(len(every))[:pairs_per_prompt]
        out += [(i, *every[k]) for k in sorted(picks)]
    return out


@dataclass
class LabelSummary:
    pairs: int = 0
    ties: int = 0
    decided: int = 0  # non-tie pairs whose two images the oracle scores differently
    disagreements: int = 0  # of those, labelled against the oracle's order
    users: set = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "annotators": len(self.users),
                "tie_share": round(self.ties / max(self.pairs, 1), 4),
                "disagreement_with_oracle": round(self.disagreements / max(self.decided, 1), 4),
                "non_tie_pairs_compared": self.decided}


def judge_pair(population: AnnotatorPopulation, caption: str, reading_0: OracleReading, reading_1: OracleReading,
               rng: np.random.Generator, summary: LabelSummary) -> tuple[tuple[float, float], Annotator]:
    """One annotator, drawn by activity, judges one pair: ((label_0, label_1), the annotator). The
    judgement is counted in ``summary``, against the oracle's order where the oracle has one."""
    annotator = population.draw(rng)
    label = annotator.choose(reading_0, reading_1, caption, rng)
    oracle = [combine_scores(score_reading(r, caption)) for r in (reading_0, reading_1)]
    summary.pairs += 1
    summary.users.add(annotator.user_id)
    if label == TIE:
        summary.ties += 1
    elif oracle[0] != oracle[1]:
        summary.decided += 1
        summary.disagreements += (label[0] > label[1]) != (oracle[0] > oracle[1])
    return label, annotator


def image_uid(image: bytes, namespace: uuid.UUID) -> str:
    """An image's uid, derived from its bytes: every later stage caches its work (reward scores,
    latents) under the uid, so an image redrawn by a new base model must get a new one, as every
    new image on Pick-a-Pic does."""
    return content_uid(image, namespace)


def label_pairs(captions: list[str], readings: list[list[OracleReading]], images: list[list[bytes]],
                generators: list[list[str]], pairs: list[tuple[int, int, int]], population: AnnotatorPopulation,
                rng: np.random.Generator, namespace: int = 0) -> tuple[dict[str, list], LabelSummary]:
    """Pick-a-Pic v2 columns for every (prompt, a, b) in ``pairs``, each judged by one annotator
    drawn by activity. ``readings[i][k]``, ``images[i][k]`` and ``generators[i][k]`` describe
    candidate k of caption i; an image keeps one uid in every row it appears in, as on Pick-a-Pic,
    and a uid names those bytes only (``image_uid``)."""
    ns = uuid.UUID(int=namespace)
    per_caption: dict[str, int] = {}
    for i, _, _ in pairs:
        per_caption[captions[i]] = per_caption.get(captions[i], 0) + 1
    start = datetime(2023, 4, 1)
    rows: dict[str, list] = {}
    summary = LabelSummary()
    for row_id, (i, a, b) in enumerate(pairs):
        label, annotator = judge_pair(population, captions[i], readings[i][a], readings[i][b], rng, summary)
        uids = [image_uid(images[i][k], ns) for k in (a, b)]
        row = {
            "are_different": images[i][a] != images[i][b],
            "best_image_uid": "" if label == TIE else uids[0 if label[0] > label[1] else 1],
            "caption": captions[i],
            "created_at": start + timedelta(seconds=37 * row_id),
            "has_label": True,
            "image_0_uid": uids[0], "image_1_uid": uids[1],
            "image_0_url": f"embedded://shapes/{uids[0]}.jpg", "image_1_url": f"embedded://shapes/{uids[1]}.jpg",
            "jpg_0": images[i][a], "jpg_1": images[i][b],
            "label_0": label[0], "label_1": label[1],
            "model_0": generators[i][a], "model_1": generators[i][b],
            "ranking_id": row_id, "user_id": annotator.user_id,
            "num_example_per_prompt": per_caption[captions[i]],
            "__index_level_0__": row_id,
        }
        for key, value in row.items():
            rows.setdefault(key, []).append(value)
    return rows, summary
