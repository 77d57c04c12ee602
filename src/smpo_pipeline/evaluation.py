"""Evaluation statistics, tables and image grids (pure: numpy, pandas, PIL; no Kedro, no torch).

The protocol is paired: every model generates the same (prompt, seed) list, so models are compared
image for image. A win rate of A over B is the share of (prompt, seed) where A's score beats B's
(ties count half); its 95 % interval is a percentile bootstrap that resamples *prompts* (the images
of one prompt are not independent), with the same resampled prompts for every comparison.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw


def win_rate(a: np.ndarray, b: np.ndarray, groups: np.ndarray, samples: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> tuple[float, float, float]:
    """(rate, low, high): how often ``a`` beats ``b`` element-wise (ties ½), with a bootstrap CI over
    ``groups`` (the prompt of each element)."""
    a, b, groups = np.asarray(a, float), np.asarray(b, float), np.asarray(groups)
    if not (len(a) == len(b) == len(groups)) or len(a) == 0:
        raise ValueError(f"win_rate needs equal, non-empty inputs (got {len(a)}, {len(b)}, {len(groups)})")
    outcome = np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))
    codes, inverse = np.unique(groups, return_inverse=True)
    totals = np.bincount(inverse, weights=outcome, minlength=len(codes))
    counts = np.bincount(inverse, minlength=len(codes))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(codes), size=(samples, len(codes)))
    boot = totals[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(outcome.mean()), float(low), float(high)


def summarize(scores: pd.DataFrame, models: list[str], reference: str = "base", samples: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
    """Per reward model: each model's mean, median, standard error; win rates of every model against
    ``reference`` and between every pair of the other models, with bootstrap CIs.

    ``scores``: one row per image — ``model``, ``prompt``, ``seed``, ``reward_model``, ``score``."""
    report = {}
    for reward_model, frame in scores.groupby("reward_model", sort=True):
        table = frame.pivot_table(index=["prompt", "seed"], columns="model", values="score", aggfunc="first")
        missing = [m for m in models if m not in table.columns]
        if missing or table[models].isna().any().any():
            raise ValueError(f"{reward_model}: models {missing or models} lack scores for some (prompt, seed): "
                             "every model must be scored on the same images")
        groups = table.index.get_level_values("prompt").to_numpy()
        per_model = {}
        for m in models:
            s = table[m].to_numpy()
            per_model[m] = {"mean": float(s.mean()), "median": float(np.median(s)),
                            "standard_error": float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else 0.0}
        comparisons = [(m, reference) for m in models if m != reference and reference in models]
        comparisons += list(itertools.combinations([m for m in models if m != reference], 2))
        wins = {}
        for a, b in comparisons:
            rate, low, high = win_rate(table[a].to_numpy(), table[b].to_numpy(), groups, samples, confidence, seed)
            wins[f"{a}_vs_{b}"] = {"win_rate": rate, "ci_low": low, "ci_high": high}
        report[reward_model] = {"images_per_model": len(table), "prompts": len(set(groups)), "models": per_model,
                                "win_rates": wins}
    return report


def markdown_table(report: dict, protocol: dict, reference: str = "base") -> str:
    """The report as Markdown: one table per reward model (model rows; win rate vs ``reference``
    with its CI), then the head-to-head win rates between objectives."""
    lines = ["# Evaluation", "",
             "Protocol: " + ", ".join(f"{k} {v}" for k, v in protocol.items()), ""]
    for reward_model, r in report.items():
        lines += [f"## {reward_model} ({r['images_per_model']} images per model, {r['prompts']} prompts)", "",
                  f"| model | mean | median | s.e. | win rate vs {reference} (95 % CI) |",
                  "|---|---:|---:|---:|---:|"]
        for m, s in r["models"].items():
            w = r["win_rates"].get(f"{m}_vs_{reference}")
            vs = f"{w['win_rate']:.1%} [{w['ci_low']:.1%}, {w['ci_high']:.1%}]" if w else "—"
            lines.append(f"| {m} | {s['mean']:.4f} | {s['median']:.4f} | {s['standard_error']:.4f} | {vs} |")
        head = {k: v for k, v in r["win_rates"].items() if not k.endswith(f"_vs_{reference}")}
        if head:
            lines += ["", "| head to head | win rate (95 % CI) |", "|---|---:|"]
            lines += [f"| {k.replace('_vs_', ' vs ')} | {v['win_rate']:.1%} [{v['ci_low']:.1%}, {v['ci_high']:.1%}] |"
                      for k, v in head.items()]
        lines.append("")
    return "\n".join(lines)


def image_grid(rows: list[list[Image.Image]], row_labels: list[str], column_labels: list[str], cell: int = 96,
               label_width: int = 260) -> Image.Image:
    """Rows = prompts, columns = models; each image scaled to ``cell`` px (nearest: pixels stay
    crisp), the prompt on the left, model names on top."""
    header = 18
    grid = Image.new("RGB", (label_width + cell * len(column_labels), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(column_labels):
        draw.text((label_width + j * cell + 4, 3), name, fill="black")
    for i, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        y = header + i * cell
        words, text, line = label.split(), [], ""
        for w in words:  # wrap the prompt to the label column
            if len(line) + len(w) + 1 > label_width // 7:
                text.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        text.append(line)
        draw.multiline_text((4, y + 4), "\n".join(text[: cell // 14]), fill="black", spacing=2)
        for j, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (label_width + j * cell, y))
    return grid
