"""``shapes-oracle``: the embedded world's programmatic reward, computed from pixels alone.

Reading an image (``read_image``):
- background colour = per-channel median of the outermost ring of pixels;
- foreground weight of a pixel = its RGB distance from the background, divided by the distance of
  the most distinct pixels (90th percentile), clipped to [0, 1]: anti-aliased edges count partly;
- shape colour = mean of the shape's core, the pixels at least 3/4 as far from the background as
  the farthest one: a blurry sample's rim is a mix of shape and background colours;
- centroid = weighted mean position; area = sum of the weights;
- fill = area / (soft width × soft height), where a column (row) adds its largest weight: ≈0.79
  for a circle, 1.0 for a square, 0.56 for a triangle (anti-aliased slopes) — how the oracle tells shapes apart.

Scoring a reading against a prompt (``score_reading``) gives five attribute scores in [0, 1]
(1 = exactly as the prompt says, Gaussian fall-off with the scales in ``_SCALES``), and the
reward is their weighted sum with ``ORACLE_WEIGHTS`` (which sum to 1):

    reward = 0.15·background + 0.25·color + 0.20·position + 0.15·size + 0.25·shape  ∈ [0, 1]

An image with no foreground at all scores only on its background. The nearest attribute values
of a reading (``OracleReading.detected``) are what the accuracy figures of a model count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from smpo_pipeline.world.grammar import COLORS, SHAPES, SIZES, Composition, parse_prompt
from smpo_pipeline.world.render import POSITION_CENTRES, expected_area

ATTRIBUTES: tuple[str, ...] = ("background", "color", "position", "size", "shape")
ORACLE_WEIGHTS: dict[str, float] = {
    "background": 0.15,
    "color": 0.25,
    "position": 0.20,
    "size": 0.15,
    "shape": 0.25,
}
# The triangle reads above its geometric 0.5 because its slanted edges are anti-aliased
# (measured on jittered 32 px renders: 0.53–0.62).
EXPECTED_FILL: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.56}
# Fall-off scales: RGB distance for colours, fraction of the canvas for position, log-area for
# size, fill ratio for shape. A neighbouring attribute value scores below ~0.1.
_SCALES = {"rgb": 60.0, "position": 0.12, "log_area": 0.35, "fill": 0.1}
_MIN_FOREGROUND_RGB = 40.0  # below this distance from the background nothing is drawn


@dataclass(frozen=True)
class OracleReading:
    """What the oracle measured in one image (independent of any prompt)."""

    resolution: int
    background_rgb: tuple[float, float, float]
    has_foreground: bool
    color_rgb: tuple[float, float, float]
    centroid: tuple[float, float]  # (x, y) as fractions of the canvas
    area: float  # pixels
    fill: float
    brightness: float  # luma of the shape colour, in [0, 1]

    @property
    def detected(self) -> dict[str, str | None]:
        """Nearest grammar value of every attribute (``None`` where nothing is drawn)."""
        background = _nearest_color(self.background_rgb)
        if not self.has_foreground:
            return {"background": background, "color": None, "position": None, "size": None, "shape": None}
        shape = min(SHAPES, key=lambda s: abs(self.fill - EXPECTED_FILL[s]))
        size = min(
            SIZES,
            key=lambda z: abs(math.log(max(self.area, 1e-6) / expected_area(shape, z, self.resolution))),
        )
        position = min(POSITION_CENTRES, key=lambda p: math.dist(self.centroid, POSITION_CENTRES[p]))
        return {
            "background": background,
            "color": _nearest_color(self.color_rgb),
            "position": position,
            "size": size,
            "shape": shape,
        }

    def right(self, prompt: str | Composition) -> dict[str, bool]:
        """Which attributes of the image are what ``prompt`` says (the nearest value read, as the
        accuracy figures count them); nothing drawn is wrong on all but the background."""
        comp = prompt if isinstance(prompt, Composition) else parse_prompt(prompt)
        return {a: value == getattr(comp, a) for a, value in self.detected.items()}


def _nearest_color(rgb) -> str:
    return min(COLORS, key=lambda c: math.dist(rgb, COLORS[c]))


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {array.shape}")
    return array


def read_image(image: Image.Image | np.ndarray) -> OracleReading:
    """Measure background, shape colour, centroid, area and fill of an RGB image (0–255)."""
    px = _as_array(image)
    h, w, _ = px.shape
    ring = np.concatenate([px[0], px[-1], px[1:-1, 0], px[1:-1, -1]])
    background = np.median(ring, axis=0)
    distance = np.linalg.norm(px - background, axis=2)
    if distance.max() < _MIN_FOREGROUND_RGB:
        return OracleReading(w, tuple(background), False, (0.0, 0.0, 0.0), (0.5, 0.5), 0.0, 0.0, 0.0)
    # The shape's own distance: the median over pixels clearly off the background.
    peak = float(np.median(distance[distance > 0.5 * distance.max()]))
    weight = np.clip(distance / peak, 0.0, 1.0)
    weight[distance < _MIN_FOREGROUND_RGB / 2] = 0.0  # background noise is not shape
    area = float(weight.sum())
    # Soft extents: a column (row) counts by its strongest pixel, so partly covered edge columns
    # count partly and a square reads fill 1.0 at any sub-pixel offset.
    box = weight.max(axis=0).sum() * weight.max(axis=1).sum()
    yy, xx = np.mgrid[0:h, 0:w]
    centroid = (
        float((weight * (xx + 0.5)).sum() / area / w),
        float((weight * (yy + 0.5)).sum() / area / h),
    )
    color = px[distance >= 0.75 * distance.max()].mean(axis=0)
    brightness = float(color @ np.array([0.299, 0.587, 0.114]) / 255.0)
    return OracleReading(w, tuple(background), True, tuple(color), centroid, area, min(area / box, 1.0), brightness)


def score_reading(reading: OracleReading, prompt: str | Composition) -> dict[str, float]:
    """The five attribute scores in [0, 1] of a reading against a prompt."""
    comp = prompt if isinstance(prompt, Composition) else parse_prompt(prompt)
    gauss = lambda x, s: math.exp(-((x / s) ** 2))  # noqa: E731
    scores = {"background": gauss(math.dist(reading.background_rgb, COLORS[comp.background]), _SCALES["rgb"])}
    if not reading.has_foreground:
        return scores | {a: 0.0 for a in ATTRIBUTES if a != "background"}
    area_ratio = max(reading.area, 1e-6) / expected_area(comp.shape, comp.size, reading.resolution)
    scores["color"] = gauss(math.dist(reading.color_rgb, COLORS[comp.color]), _SCALES["rgb"])
    scores["position"] = gauss(math.dist(reading.centroid, POSITION_CENTRES[comp.position]), _SCALES["position"])
    scores["size"] = gauss(math.log(area_ratio), _SCALES["log_area"])
    scores["shape"] = gauss(reading.fill - EXPECTED_FILL[comp.shape], _SCALES["fill"])
    return scores


def combine_scores(scores: dict[str, float], weights: dict[str, float] = ORACLE_WEIGHTS) -> float:
    return float(sum(weights[a] * scores[a] for a in ATTRIBUTES))


def oracle_reward(image: Image.Image | np.ndarray, prompt: str | Composition) -> float:
    """``shapes-oracle(image, prompt)`` in [0, 1]; 1 means every attribute is exactly right."""
    return combine_scores(score_reading(read_image(image), prompt))
