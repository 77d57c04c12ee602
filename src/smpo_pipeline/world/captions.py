"""Web-like captions: what the base model is pretrained on.

Real text-to-image bases learn from alt-texts that are often wrong, and their typical failures —
attribute binding, wrong position, wrong colour — are what preference data corrects. A base trained
on the grammar's exact prompts instead learns (or fails to learn) each attribute uniformly, and two
of its samples rarely differ in what an annotator looks at. Here every training image is rendered
from its true composition, and its caption is the prompt with, independently per kind, one of these
realistic mistakes:

- ``swap_colors``: shape colour and background exchanged (attribute binding);
- ``position``: another position;
- ``color``: another shape colour (never the background's);
- ``shape``: another shape;
- ``size``: the other size.

The base then follows a prompt only part of the time, so a pair of its samples often shows one
right and one wrong image — the signal Diffusion-DPO, SmPO and DRO learn from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from smpo_pipeline.world.grammar import COLORS, POSITIONS, SHAPES, SIZES, Composition, parse_prompt

MISTAKES: tuple[str, ...] = ("swap_colors", "position", "color", "shape", "size")


def _other(value: str, choices, rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    options = [c for c in choices if c != value and c not in exclude]
    return options[int(rng.integers(len(options)))]


def web_caption(prompt: str | Composition, rates: Mapping[str, float], rng: np.random.Generator) -> tuple[str, list[str]]:
    """The caption a web page might carry for the image of ``prompt``, and the mistakes it has.

    ``rates`` maps each kind of mistake (``MISTAKES``) to its probability; kinds are drawn
    independently, in the order of ``MISTAKES``, so one caption can carry several.
    """
    unknown = set(rates) - set(MISTAKES)
    if unknown:
        raise ValueError(f"unknown caption mistakes {sorted(unknown)}: expected some of {list(MISTAKES)}")
    comp = prompt if isinstance(prompt, Composition) else parse_prompt(prompt)
    made = []
    for kind in MISTAKES:
        if rng.random() >= rates.get(kind, 0.0):
            continue
        made.append(kind)
        if kind == "swap_colors":
            comp = replace(comp, color=comp.background, background=comp.color)
        elif kind == "position":
            comp = replace(comp, position=_other(comp.position, POSITIONS, rng))
        elif kind == "color":
            comp = replace(comp, color=_other(comp.color, COLORS, rng, exclude=(comp.background,)))
        elif kind == "shape":
            comp = replace(comp, shape=_other(comp.shape, SHAPES, rng))
        else:
            comp = replace(comp, size=_other(comp.size, SIZES, rng))
    return comp.prompt, made


def web_captions(prompts, rates: Mapping[str, float], seed: int) -> tuple[list[str], dict[str, float]]:
    """``web_caption`` of every prompt with one seeded generator, and the measured share of
    captions carrying each kind of mistake (what the bootstrap report shows beside the accuracy)."""
    rng = np.random.default_rng(seed)
    captions, counts = [], dict.fromkeys(MISTAKES, 0)
    for prompt in prompts:
        caption, made = web_caption(prompt, rates, rng)
        captions.append(caption)
        for kind in made:
            counts[kind] += 1
    n = max(len(captions), 1)
    return captions, {kind: round(c / n, 4) for kind, c in counts.items()}
