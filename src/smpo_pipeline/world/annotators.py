"""A simulated population of annotators whose preferences vary — SmPO's premise, made testable.

Each annotator k:
- weighs the oracle's five attribute scores with weights w_k ~ Dirichlet(c · ORACLE_WEIGHTS), so on
  average they agree with the oracle but individually care more about colour, or position, ...;
- has a taste of their own: ``size_taste`` (likes larger shapes if > 0) and ``brightness_taste``
  (likes brighter shapes if > 0), added to the utility;
- decides by a Bradley–Terry draw, P(image 0 ≻ image 1) = σ(rationality_k · (u_0 − u_1));
- declares a tie when |u_0 − u_1| < tie_margin_k (they cannot tell the two apart).

Utility u_k(image, prompt) = Σ_a w_k,a · score_a + size_taste_k · tanh(log(area / expected area))
+ brightness_taste_k · (brightness − 0.5).

Some annotators label far more pairs than others (Zipf-like activity), as on Pick-a-Pic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smpo_pipeline.world.grammar import Composition, parse_prompt
from smpo_pipeline.world.oracle import ATTRIBUTES, ORACLE_WEIGHTS, OracleReading, score_reading
from smpo_pipeline.world.render import expected_area

TIE, PREFER_0, PREFER_1 = (0.5, 0.5), (1.0, 0.0), (0.0, 1.0)


@dataclass(frozen=True)
class Annotator:
    user_id: int
    weights: dict[str, float]
    size_taste: float
    brightness_taste: float
    rationality: float
    tie_margin: float

    def utility(self, reading: OracleReading, prompt: str | Composition) -> float:
        comp = prompt if isinstance(prompt, Composition) else parse_prompt(prompt)
        scores = score_reading(reading, comp)
        u = sum(self.weights[a] * scores[a] for a in ATTRIBUTES)
        if reading.has_foreground:
            ratio = max(reading.area, 1e-6) / expected_area(comp.shape, comp.size, reading.resolution)
            u += self.size_taste * math.tanh(math.log(ratio))
            u += self.brightness_taste * (reading.brightness - 0.5)
        return float(u)

    def choose(
        self,
        reading_0: OracleReading,
        reading_1: OracleReading,
        prompt: str | Composition,
        rng: np.random.Generator,
    ) -> tuple[float, float]:
        """(label_0, label_1) in Pick-a-Pic's convention: (1, 0), (0, 1) or (0.5, 0.5)."""
        delta = self.utility(reading_0, prompt) - self.utility(reading_1, prompt)
        if abs(delta) < self.tie_margin:
            return TIE
        p_first = 1.0 / (1.0 + math.exp(-self.rationality * delta))
        return PREFER_0 if rng.random() < p_first else PREFER_1


class AnnotatorPopulation:
    """``size`` annotators drawn from a seeded distribution of tastes (see the module docstring)."""

    def __init__(
        self,
        size: int = 40,
        seed: int = 0,
        weight_concentration: float = 8.0,
        taste_scale: float = 0.15,
        rationality_median: float = 12.0,
        max_tie_margin: float = 0.04,
        zipf_exponent: float = 1.1,
        first_user_id: int = 1000,
    ) -> None:
        if size < 1:
            raise ValueError("an annotator population needs at least one annotator")
        rng = np.random.default_rng(seed)
        alpha = weight_concentration * np.array([ORACLE_WEIGHTS[a] for a in ATTRIBUTES])
        self.annotators = [
            Annotator(
                user_id=first_user_id + k,
                weights=dict(zip(ATTRIBUTES, rng.dirichlet(alpha).tolist(), strict=True)),
                size_taste=float(rng.normal(0.0, taste_scale)),
                brightness_taste=float(rng.normal(0.0, taste_scale)),
                rationality=float(rationality_median * math.exp(rng.normal(0.0, 0.5))),
                tie_margin=float(rng.uniform(0.0, max_tie_margin)),
            )
            for k in range(size)
        ]
        activity = 1.0 / np.arange(1, size + 1) ** zipf_exponent
        self.activity = activity / activity.sum()

    def __len__(self) -> int:
        return len(self.annotators)

    def draw(self, rng: np.random.Generator) -> Annotator:
        """An annotator, drawn by activity (a few label most pairs, as on Pick-a-Pic)."""
        return self.annotators[int(rng.choice(len(self.annotators), p=self.activity))]
