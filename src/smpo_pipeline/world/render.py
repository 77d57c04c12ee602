"""The ideal renderer: a prompt in, the picture it describes out (PIL, RGB).

Geometry is in output pixels of a ``resolution``-sized canvas (32 by default) and scales with
it. Shapes are drawn 4× supersampled and box-filtered down, so edges are anti-aliased the way a
decoder's output is. Jitter moves the centre, scales the shape and perturbs both colors, so the
renders of one prompt form a distribution, not a single image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from smpo_pipeline.world.grammar import COLORS, Composition, parse_prompt

_SUPERSAMPLE = 4
# Centre of each position, as a fraction of the canvas.
POSITION_CENTRES: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.297, 0.5),
    "right": (0.703, 0.5),
    "top": (0.5, 0.297),
    "bottom": (0.5, 0.703),
}
# The shape's scale r, as a fraction of the canvas (3.5 px and 6 px at 32 px).
SIZE_SCALES: dict[str, float] = {"small": 0.109, "large": 0.1875}
# Area of each shape for scale r is AREA_FACTORS[shape] * r**2 (see ``_polygon``).
AREA_FACTORS: dict[str, float] = {
    "circle": math.pi,
    "square": (2 * 0.9) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * 1.5**2,
}


def expected_area(shape: str, size: str, resolution: int) -> float:
    """Area in pixels of the un-jittered shape: what the oracle compares a reading against."""
    r = SIZE_SCALES[size] * resolution
    return AREA_FACTORS[shape] * r * r


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = 0.9 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        # Upward equilateral triangle with circumradius 1.5 r, centred on its centroid.
        big = 1.5 * r
        return [
            (cx + big * math.cos(a), cy - big * math.sin(a))
            for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        ]
    return None  # circle: drawn as an ellipse


def _jitter_color(rgb: tuple[int, int, int], amount: float, rng: np.random.Generator | None):
    if rng is None or amount == 0:
        return rgb
    noisy = np.asarray(rgb, dtype=float) + rng.uniform(-amount, amount, size=3)
    return tuple(int(v) for v in np.clip(np.round(noisy), 0, 255))


def render(
    prompt: str | Composition,
    resolution: int = 32,
    rng: np.random.Generator | None = None,
    position_jitter: float = 0.045,
    scale_jitter: float = 0.1,
    color_jitter: float = 12.0,
) -> Image.Image:
    """Render the ideal image of ``prompt``. With ``rng=None`` the render is exact (no jitter).

    ``position_jitter`` is a fraction of the canvas (±1.4 px at 32 px), ``scale_jitter`` a relative
    change of the shape's scale, ``color_jitter`` an RGB amount per channel.
    """
    comp = prompt if isinstance(prompt, Composition) else parse_prompt(prompt)
    big = resolution * _SUPERSAMPLE
    fx, fy = POSITION_CENTRES[comp.position]
    r = SIZE_SCALES[comp.size]
    if rng is not None:
        fx += rng.uniform(-position_jitter, position_jitter)
        fy += rng.uniform(-position_jitter, position_jitter)
        r *= 1 + rng.uniform(-scale_jitter, scale_jitter)
    cx, cy, rr = fx * big, fy * big, r * big

    background = _jitter_color(COLORS[comp.background], color_jitter * 0.6, rng)
    color = _jitter_color(COLORS[comp.color], color_jitter, rng)
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    polygon = _polygon(comp.shape, cx, cy, rr)
    if polygon is None:
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=color)
    else:
        draw.polygon(polygon, fill=color)
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)
