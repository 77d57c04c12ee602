"""The prompt grammar of the shapes world and its fixed train / validation / test split.

``a {size} {color} {shape} at the {position} on a {background} background``

Every composition (size, color, shape, position, background) with background != color is a
prompt: 2 × 8 × 3 × 5 × 7 = 1680 of them. The split is over whole compositions, so a test
prompt is a combination of attributes the model never saw as a whole during training (each
single attribute value is still seen, which is what makes the test a test of composition).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
# RGB of the ideal color. Chosen so that every pair is at least ~80 apart in RGB distance,
# which keeps the oracle's nearest-color reading unambiguous on blurry samples.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
BACKGROUNDS: tuple[str, ...] = tuple(COLORS)

_TEMPLATE = "a {size} {color} {shape} at the {position} on a {background} background"
_PATTERN = re.compile(
    r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) at the (?P<position>\w+) "
    r"on a (?P<background>\w+) background$"
)


@dataclass(frozen=True, order=True)
class Composition:
    """One point of the grammar. ``str(c)`` is its prompt."""

    size: str
    color: str
    shape: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for field, allowed in (
            ("size", SIZES),
            ("color", COLORS),
            ("shape", SHAPES),
            ("position", POSITIONS),
            ("background", BACKGROUNDS),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {sorted(allowed)}")
        if self.color == self.background:
            raise ValueError(f"the shape color and the background are both {self.color!r}")

    @property
    def prompt(self) -> str:
        return _TEMPLATE.format(**self.__dict__)

    def __str__(self) -> str:
        return self.prompt


def parse_prompt(prompt: str) -> Composition:
    """Inverse of ``Composition.prompt``; raises ``ValueError`` naming what does not parse."""
    match = _PATTERN.match(prompt.strip())
    if match is None:
        raise ValueError(f"not a shapes-world prompt: {prompt!r}")
    return Composition(**match.groupdict())


def all_compositions() -> list[Composition]:
    """Every valid composition, in a fixed (sorted) order."""
    return [
        Composition(size, color, shape, position, background)
        for size, color, shape, position, background in itertools.product(
            SIZES, COLORS, SHAPES, POSITIONS, BACKGROUNDS
        )
        if color != background
    ]


def split_compositions(
    seed: int, validation_share: float, test_share: float
) -> dict[str, list[Composition]]:
    """A seeded, disjoint split of all compositions into train / validation / test."""
    if not (0 < validation_share < 1 and 0 < test_share < 1 and validation_share + test_share < 1):
        raise ValueError("validation_share and test_share must be in (0, 1) and sum below 1")
    comps = all_compositions()
    order = np.random.default_rng(seed).permutation(len(comps))
    n_val = round(len(comps) * validation_share)
    n_test = round(len(comps) * test_share)
    pick = lambda idx: sorted(comps[i] for i in idx)  # noqa: E731 - sorted for stable files
    return {
        "test": pick(order[:n_test]),
        "validation": pick(order[n_test : n_test + n_val]),
        "train": pick(order[n_test + n_val :]),
    }


def vocabulary() -> list[str]:
    """Every word the grammar can produce (what the tokenizer is trained on)."""
    words = set(_TEMPLATE.replace("{", " ").replace("}", " ").split()) - {
        "size",
        "color",
        "shape",
        "position",
        "background",
    }
    words |= set(SIZES) | set(COLORS) | set(SHAPES) | set(POSITIONS) | {"background"}
    return sorted(words)
