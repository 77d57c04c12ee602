"""Where the shipped base model puts its shape: where the prompt says, or where the initial noise
says (docs/regime.md, round 8: no UNet tried learns position).

0. **What the text encoders carry of each word**: the relative change of the prompt embeddings
   when one attribute's word changes.
1. **Same noise, five position words.** For each of ``--compositions`` validation prompts and
   ``--seeds`` seeds, one image for each of the five position words, the five drawn from the same
   initial noise. If the word placed the shape, images of one seed would sit at five places; if the
   noise placed it, the five would sit together. Prints the mean distance between the centroids of
   one seed's five images (different words) and between those of one word's images (different
   seeds), and the position accuracy.
2. **The signal the noise schedule leaves at the sampler's first timestep.** SDXL's
   ``scaled_linear`` schedule does not reach zero SNR (Lin et al. 2024, "Common Diffusion Noise
   Schedules and Sample Steps are Flawed"): in training, x_t at the largest t still carries
   √ᾱ_t of the clean latent, and on a 16×16 latent a shape covers tens of latent pixels, so the
   noise's mean over its area hides it less than a pixel's noise does.
3. **Sampling from the training distribution at that timestep**: x = √ᾱ·z₀ + √(1−ᾱ)·ε with z₀ the
   VAE latent of an ideal render, (a) of the prompt itself, (b) of the prompt with another position
   word. If the shape follows (b)'s render rather than the prompt, the model reads position from
   x_t, where training always shows it, and never had to learn it from the words.

    .venv/bin/python benchmarks/position_from_noise.py          # ≈ 4 min on a 2-core CPU

Euler 20 steps ("leading", the shipped scheduler), guidance 3: the evaluation's protocol.
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

BASE = Path("data/01_raw/base_model")
PROMPTS = Path("data/01_raw/prompts")


def _with_position(prompt: str, position: str) -> str:
    from smpo_pipeline.world.grammar import parse_prompt

    return replace(parse_prompt(prompt), position=position).prompt


def _draw(pipe, prompts: list[str], latents, steps: int, guidance: float, resolution: int) -> list:
    import torch

    with torch.inference_mode():
        return pipe(prompt=prompts, latents=latents, num_inference_steps=steps, guidance_scale=guidance,
                    height=resolution, width=resolution).images


def _accuracy(images, prompts) -> float:
    """Share of ``images`` whose shape sits at its prompt's position (the bootstrap's own measure)."""
    from smpo_pipeline.pipelines.bootstrap.nodes import attribute_accuracy

    return attribute_accuracy(images, prompts)["accuracy"]["position"]


def word_sensitivity(pipe, prompts: list[str]) -> None:
    """How far the text encoders move when one word of the prompt changes: the relative change of
    the prompt embeddings, averaged over ``prompts`` and every other value of the attribute."""
    import torch

    from smpo_pipeline.world.grammar import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, parse_prompt

    def embeds(batch: list[str]):
        with torch.no_grad():
            return pipe.encode_prompt(batch, do_classifier_free_guidance=False)[0]

    print("0. change of the prompt embeddings when one word changes (relative norm)")
    for attribute, values in (("position", POSITIONS), ("shape", SHAPES), ("size", SIZES), ("color", COLORS),
                              ("background", BACKGROUNDS)):
        changes = []
        for prompt in prompts:
            comp = parse_prompt(prompt)
            others = [v for v in values if v != getattr(comp, attribute)
                      and v != (comp.background if attribute == "color" else comp.color)]
            variants = [replace(comp, **{attribute: v}).prompt for v in others]
            e = embeds([prompt, *variants])
            changes += [float((e[i] - e[0]).norm() / e[0].norm()) for i in range(1, len(e))]
        print(f"   {attribute:<10} {np.mean(changes):.3f}")


def same_noise(pipe, prompts: list[str], seeds: int, steps: int, guidance: float, resolution: int) -> None:
    import torch

    from smpo_pipeline.world.grammar import POSITIONS
    from smpo_pipeline.world.oracle import read_image

    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    rows = [(p, s, w) for p in prompts for s in range(seeds) for w in POSITIONS]
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(10_000 + s)) for _, s, _ in rows])
    worded = [_with_position(p, w) for p, _, w in rows]
    images = []
    for start in range(0, len(rows), 80):
        images += _draw(pipe, worded[start:start + 80], noise[start:start + 80], steps, guidance, resolution)
    centroid = {row: np.array(read_image(i).centroid) for row, i in zip(rows, images, strict=True)}

    def mean_distance(groups) -> float:
        return float(np.mean([np.linalg.norm(centroid[a] - centroid[b]) for g in groups
                              for a, b in itertools.combinations(g, 2)]))

    one_seed = [[(p, s, w) for w in POSITIONS] for p in prompts for s in range(seeds)]
    one_word = [[(p, s, w) for s in range(seeds)] for p in prompts for w in POSITIONS]
    print(f"1. {len(prompts)} compositions × {seeds} seeds × {len(POSITIONS)} position words ({len(rows)} images)")
    print(f"   centroid distance, same noise, different words: {mean_distance(one_seed):.3f} of the canvas")
    print(f"   centroid distance, same word, different noise:  {mean_distance(one_word):.3f}")
    print(f"   position accuracy: {_accuracy(images, worded):.1%} (chance 20 %)")


def terminal_signal(pipe, steps: int) -> None:
    """ᾱ at the first timestep the sampler visits, printed with what it leaves of a shape."""
    from smpo_pipeline.world.render import SIZE_SCALES

    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    t0 = int(scheduler.timesteps[0])
    abar = float(scheduler.alphas_cumprod[t0])
    print(f"2. first sampling timestep t = {t0} of {scheduler.config.num_train_timesteps}: ᾱ = {abar:.4f}, "
          f"√ᾱ = {math.sqrt(abar):.3f} of the clean latent survives (zero-SNR schedule: 0)")
    latent_side = pipe.unet.config.sample_size
    for size, r in SIZE_SCALES.items():
        pixels = math.pi * (r * latent_side) ** 2  # a circle's area in latent pixels
        print(f"   {size} shape: ~{pixels:.0f} latent pixels; its mean over them against the noise's: "
              f"√(ᾱ/(1−ᾱ))·√n = {math.sqrt(abar / (1 - abar) * pixels):.2f} per unit of latent contrast")


def leaked_start(pipe, prompts: list[str], steps: int, guidance: float, resolution: int) -> None:
    import torch

    from smpo_pipeline.training.pretraining import render_batch
    from smpo_pipeline.world.grammar import POSITIONS, parse_prompt

    rng = np.random.default_rng(0)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    sigma0, init = float(scheduler.sigmas[0]), float(scheduler.init_noise_sigma)
    # Euler's sample is x_t / √ᾱ_t = z₀ + σ ε; the pipeline multiplies given latents by init_noise_sigma.
    other = [_with_position(p, POSITIONS[(POSITIONS.index(parse_prompt(p).position) + 1 + k % 4) % 5])
             for k, p in enumerate(prompts)]
    noise = torch.randn((len(prompts), pipe.unet.config.in_channels, pipe.unet.config.sample_size,
                         pipe.unet.config.sample_size), generator=torch.Generator().manual_seed(0))
    print(f"3. {len(prompts)} validation prompts, sampling started at σ = {sigma0:.2f}")
    for name, source in (("pure noise", None), ("the prompt's own render", prompts),
                         ("a render with another position", other)):
        if source is None:
            z0 = torch.zeros_like(noise)
        else:
            with torch.no_grad():
                z0 = pipe.vae.encode(render_batch(source, resolution, rng)).latent_dist.mean
            z0 = z0 * pipe.vae.config.scaling_factor
        images = _draw(pipe, prompts, (z0 + sigma0 * noise) / init, steps, guidance, resolution)
        line = f"   start from {name:<32} position accuracy {_accuracy(images, prompts):6.1%}"
        if source is other:
            line += f"; the other render's position {_accuracy(images, other):.1%}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compositions", type=int, default=24, help="the first N validation prompts (part 1)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=96, help="the first N validation prompts (part 3)")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: part 1 compares one word's images across noises, so it needs at least 2")
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()
    pipe = StableDiffusionXLPipeline.from_pretrained(BASE)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    validation = [p for p in (PROMPTS / "validation.txt").read_text().splitlines() if p]
    word_sensitivity(pipe, validation[: args.compositions])
    same_noise(pipe, validation[: args.compositions], args.seeds, 20, 3.0, resolution)
    terminal_signal(pipe, 20)
    leaked_start(pipe, validation[: args.prompts], 20, 3.0, resolution)


if __name__ == "__main__":
    main()
