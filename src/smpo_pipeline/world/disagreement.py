"""One axis of annotator disagreement, from nearly unanimous to nearly random.

SmPO's premise (Lu et al., ICML 2025) is that binary labels from people whose preferences vary are
noisy, and that smoothing them with a reward model makes alignment degrade less than Diffusion-DPO
does as the disagreement grows. The embedded world can turn the disagreement up and down on the same
images. The annotators (``world.annotators``) differ in their Bradley–Terry rationality, in how they
weigh the attributes and in their personal tastes; one number ``d`` in [0, 1] moves all three together:

- rationality (inverse temperature), log-interpolated from 200 at d = 0 (the image with the higher
  utility wins nearly always) to 0.5 at d = 1 (a near coin flip at these pairs' utility gaps);
- the Dirichlet concentration of the attribute weights, log-interpolated from 200 (everyone weighs
  the attributes as the oracle does) to 1 (everyone has weights of their own);
- the scale of the size and brightness tastes, linear from 0 to 0.3.

Tie margins are not on the axis (ties are dropped by every objective alike). ``d`` names a
population, not an agreement: what a level means is its *measured* agreement with the oracle on
the pairs it labels (``relabel``), which also depends on how different the two images of a pair are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smpo_pipeline.world.annotators import AnnotatorPopulation
from smpo_pipeline.world.labelling import LabelSummary, judge_pair
from smpo_pipeline.world.oracle import OracleReading


@dataclass(frozen=True, kw_only=True)
class DisagreementAxis:
    """The populations along the axis: each setting's value at d = 0 and at d = 1."""

    rationality: tuple[float, float] = (200.0, 0.5)
    weight_concentration: tuple[float, float] = (200.0, 1.0)
    taste_scale: tuple[float, float] = (0.0, 0.3)
    max_tie_margin: float = 0.04
    population_size: int = 40
    zipf_exponent: float = 1.1

    def population(self, d: float, seed: int) -> AnnotatorPopulation:
        """The annotators at disagreement level ``d`` (the same ``seed`` gives the same people's
        draws at every level, only their spread changes)."""
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"a disagreement level must lie in [0, 1] (got {d})")

        def geometric(ends: tuple[float, float]) -> float:
            return math.exp((1 - d) * math.log(ends[0]) + d * math.log(ends[1]))

        return AnnotatorPopulation(
            size=self.population_size, seed=seed, weight_concentration=geometric(self.weight_concentration),
            taste_scale=(1 - d) * self.taste_scale[0] + d * self.taste_scale[1],
            rationality_median=geometric(self.rationality), max_tie_margin=self.max_tie_margin,
            zipf_exponent=self.zipf_exponent)


def relabel(captions: list[str], readings_0: list[OracleReading], readings_1: list[OracleReading],
            population: AnnotatorPopulation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, LabelSummary]:
    """Every pair (caption, image 0, image 1) judged again by an annotator of ``population`` drawn
    by activity: (label_0, label_1) in Pick-a-Pic's convention (1/0, 0/1 or ½/½ for a tie) and the
    summary, whose ``disagreement_with_oracle`` is measured on the pairs the oracle can order."""
    summary = LabelSummary()
    labels = np.array([judge_pair(population, caption, r0, r1, rng, summary)[0]
                       for caption, r0, r1 in zip(captions, readings_0, readings_1, strict=True)]).reshape(-1, 2)
    return labels[:, 0], labels[:, 1], summary
