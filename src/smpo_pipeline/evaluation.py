"""Evaluation: the shapes-oracle reward of a model's images, its implicit agreement with the oracle on
held-out pairs, and the statistics, tables and image grids (no Kedro; torch only inside functions).

The protocol is paired: every model generates the same (prompt, seed) list, so models are compared
image for image. A win rate of A over B is the share of (prompt, seed) where A's score beats B's
(ties count half); its 95 % interval is a percentile bootstrap that resamples *prompts* (the images
of one prompt are not independent), with the same resampled prompts for every comparison. A model
trained with several seeds is several runs (replicas); intervals then resample the runs as well.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw


def prompt_seed_grid(prompts: list[str], per_prompt: int, first_seed: int = 0,
                     same_seeds_for_every_prompt: bool = False) -> tuple[list[str], list[int]]:
    """Every prompt repeated ``per_prompt`` times, with the seed of each image: by default a seed
    of its own (``first_seed`` + its position in the grid: the bootstrap's and the validation
    measurements' rule); with ``same_seeds_for_every_prompt``, ``first_seed`` + k for the k-th image of
    every prompt (the evaluation's rule). Every model is sampled on the same grid, so two models
    are compared on paired draws."""
    grid = [p for p in prompts for _ in range(per_prompt)]
    if same_seeds_for_every_prompt:
        return grid, [first_seed + k for _ in prompts for k in range(per_prompt)]
    return grid, [first_seed + i for i in range(len(grid))]


def oracle_rewards(model, prompts: list[str], seeds: list[int], protocol, batch_size: int, **generate_args):
    """The shapes-oracle reward of ``model``'s image for every (prompt, seed)."""
    from smpo_pipeline.models.sampling import generate
    from smpo_pipeline.world.oracle import oracle_reward

    images = generate(model, prompts, seeds, protocol, batch_size, **generate_args)
    return np.array([oracle_reward(i, p) for i, p in zip(images, prompts, strict=True)])


class HeldOutDraws:
    """Held-out pairs (winner and loser by the oracle: ``CachedPairs`` rows) noised once, ``draws``
    (noise, timestep) draws a pair from ``seed`` alone, with the reference's denoising errors on
    them: every model is then measured on the same draws, and the reference runs only once.

    ``agreement(policy)``: per pair, the share of draws at which the policy's implicit reward ranks
    the pair as the oracle does, i.e. it lowers the winner's denoising error, relative to the
    reference, more than the loser's (Diffusion-DPO's implicit reward, Wallace et al. 2024, eq. 14).
    A tie counts half, so the reference itself scores ½."""

    def __init__(self, pairs, draws: int, alphas_cumprod, timestep_range, reference, seed: int = 0,
                 batch_size: int = 64, prediction_type: str = "epsilon") -> None:
        import torch

        from smpo_pipeline.training.step import add_noise, prediction_target

        generator = torch.Generator().manual_seed(seed)
        self.batches = []  # per batch: its conditioning, and per draw (x_t, t, target)
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                batch = pairs.batch(range(start, min(start + batch_size, len(pairs))))
                x0 = torch.cat([batch.latents_w, batch.latents_l])
                cond = (batch.prompt_embeds.repeat(2, 1, 1), batch.pooled.repeat(2, 1), batch.time_ids.repeat(2, 1))
                noised = []
                for _ in range(draws):
                    t = torch.randint(*timestep_range, (len(batch),), generator=generator).repeat(2)
                    noise = torch.randn(batch.latents_w.shape, generator=generator).repeat(2, 1, 1, 1)
                    # the error is taken against the model's own target, ε or v (its schedule's prediction_type)
                    target = prediction_target(x0, noise, t, alphas_cumprod, prediction_type)
                    noised.append((add_noise(x0, noise, t, alphas_cumprod), t, target))
                self.batches.append((cond, noised))
        self.reference_errors = self._errors(reference)

    def __len__(self) -> int:
        return sum(len(cond[1]) // 2 for cond, _ in self.batches)

    def _errors(self, unet) -> list:
        import torch

        from smpo_pipeline.training.step import per_sample_mse

        with torch.no_grad():
            return [[per_sample_mse(unet, x_t, t, target, *cond).chunk(2) for x_t, t, target in noised]
                    for cond, noised in self.batches]

    def agreement(self, policy) -> np.ndarray:
        out = []
        for reference, mine in zip(self.reference_errors, self._errors(policy), strict=True):
            hits = 0.0
            for (ref_w, ref_l), (policy_w, policy_l) in zip(reference, mine, strict=True):
                margin = (ref_w - policy_w) - (ref_l - policy_l)
                hits = hits + (margin > 0).float() + 0.5 * (margin == 0).float()
            out.append((hits / len(reference)).numpy())
        return np.concatenate(out)


def implicit_agreement(policy, reference, pairs, draws: int, alphas_cumprod, timestep_range, seed: int = 0,
                       batch_size: int = 64, prediction_type: str = "epsilon") -> np.ndarray:
    """``HeldOutDraws(...).agreement(policy)`` for one policy."""
    return HeldOutDraws(pairs, draws, alphas_cumprod, timestep_range, reference, seed, batch_size,
                        prediction_type).agreement(policy)


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


def _per_prompt(frame: pd.DataFrame, model: str, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean score [replica, prompt], scores [replica, prompt, image seed]) of one model, prompts in
    the order of ``prompts``."""
    table = frame[frame.model == model].pivot_table(index=["replica", "prompt"], columns="seed", values="score",
                                                    aggfunc="first")
    replicas = sorted(table.index.get_level_values("replica").unique())
    cube = np.stack([table.loc[r].reindex(prompts).to_numpy() for r in replicas])
    return cube.mean(axis=2), cube


def hierarchical_bootstrap(values: np.ndarray, samples: int, confidence: float, seed: int) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean of ``values[replica of A, replica of B, prompt]``, with a
    percentile interval that resamples prompts *and* the training runs of each side: the spread
    between training seeds is part of the uncertainty, not only the spread between prompts."""
    ra, rb, n = values.shape
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(samples, n))
    draws_a, draws_b = rng.integers(0, ra, size=(samples, ra)), rng.integers(0, rb, size=(samples, rb))
    per_sample = np.take(values, picks, axis=2).mean(axis=3)  # [ra, rb, samples]
    boot = np.array([per_sample[np.ix_(draws_a[k], draws_b[k], [k])].mean() for k in range(samples)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def summarize(scores: pd.DataFrame, models: list[str], reference: str = "base", samples: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
    """Per reward model: each model's mean, median, standard error and number of training runs; the
    gain in mean score and the win rate of every model against ``reference`` and of every two other
    models, each with an interval that resamples prompts and training runs (``hierarchical_bootstrap``).

    ``scores``: one row per image — ``model``, ``prompt``, ``seed`` (the image's), ``reward_model``,
    ``score`` and, for models trained several times, ``replica`` (0, 1, …; absent: one run). A win
    compares images of the same (prompt, seed) — ties count half — over every pair of runs."""
    scores = scores if "replica" in scores else scores.assign(replica=0)
    report = {}
    for reward_model, frame in scores.groupby("reward_model", sort=True):
        counts = frame.groupby(["model", "replica"]).size()
        expected = frame[["prompt", "seed"]].drop_duplicates()
        short = [m for m in models if m not in counts.index.get_level_values("model")
                 or (counts.loc[m] != len(expected)).any()]
        if short:
            raise ValueError(f"{reward_model}: models {short} lack scores for some (prompt, seed): "
                             "every model must be scored on the same images")
        prompts = np.array(sorted(expected.prompt.unique()))
        means, cubes = {}, {}
        for m in models:
            means[m], cubes[m] = _per_prompt(frame, m, prompts)
        per_model = {}
        for m in models:
            s = cubes[m].ravel()
            per_model[m] = {"mean": float(s.mean()), "median": float(np.median(s)), "runs": int(cubes[m].shape[0]),
                            "standard_error": float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else 0.0}
        comparisons = [(m, reference) for m in models if m != reference and reference in models]
        comparisons += list(itertools.combinations([m for m in models if m != reference], 2))
        gains, wins = {}, {}
        for a, b in comparisons:
            diff = means[a][:, None, :] - means[b][None, :, :]
            gain, low, high = hierarchical_bootstrap(diff, samples, confidence, seed)
            gains[f"{a}_vs_{b}"] = {"difference": gain, "ci_low": low, "ci_high": high}
            ca, cb = cubes[a][:, None], cubes[b][None, :]
            outcome = np.where(ca > cb, 1.0, np.where(ca < cb, 0.0, 0.5)).mean(axis=3)
            rate, low, high = hierarchical_bootstrap(outcome, samples, confidence, seed)
            wins[f"{a}_vs_{b}"] = {"win_rate": rate, "ci_low": low, "ci_high": high}
        report[reward_model] = {"images_per_model": len(expected), "prompts": len(prompts), "models": per_model,
                                "differences": gains, "win_rates": wins}
    return report


def markdown_table(report: dict, protocol: dict, reference: str = "base") -> str:
    """The report as Markdown: one table per reward model (model rows; gain and win rate vs
    ``reference`` with their intervals), then every two other models head to head."""
    def interval(v: dict, key: str, fmt: str) -> str:
        return f"{v[key]:{fmt}} [{v['ci_low']:{fmt}}, {v['ci_high']:{fmt}}]"

    lines = ["# Evaluation", "",
             "Protocol: " + ", ".join(f"{k} {v}" for k, v in protocol.items()), "",
             "Intervals: 95 % bootstrap over prompts and training runs (seeds).", ""]
    for reward_model, r in report.items():
        lines += [f"## {reward_model} ({r['images_per_model']} images per run, {r['prompts']} prompts)", "",
                  f"| model | runs | mean | median | gain vs {reference} (95 % CI) | win rate vs {reference} (95 % CI) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for m, s in r["models"].items():
            key = f"{m}_vs_{reference}"
            gain = interval(r["differences"][key], "difference", "+.4f") if key in r["differences"] else "—"
            win = interval(r["win_rates"][key], "win_rate", ".1%") if key in r["win_rates"] else "—"
            lines.append(f"| {m} | {s['runs']} | {s['mean']:.4f} | {s['median']:.4f} | {gain} | {win} |")
        head = [k for k in r["win_rates"] if not k.endswith(f"_vs_{reference}")]
        if head:
            lines += ["", "| head to head | difference in mean (95 % CI) | win rate (95 % CI) |", "|---|---:|---:|"]
            lines += [f"| {k.replace('_vs_', ' vs ')} | {interval(r['differences'][k], 'difference', '+.4f')} | "
                      f"{interval(r['win_rates'][k], 'win_rate', '.1%')} |" for k in head]
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
