"""Inversion sanity on the embedded base model: invert VAE latents of test-prompt renders along the
DDIM inverse grid with ReNoise (R = 0..3), run the DDIM sampler back, and print the reconstruction
error of the starting latent (relative MSE) and the UNet passes it cost.

    .venv/bin/python benchmarks/inversion_reconstruction.py [--model data/01_raw/base_model] [--images 32]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/01_raw/base_model")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # offline, telemetry off
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.inversion import (
        InversionConfig,
        ddim_reconstruct,
        inverse_scheduler,
        renoise_inversion,
    )
    from smpo_pipeline.models.conditioning import encode_prompts, time_ids
    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.training.pretraining import render_batch
    from smpo_pipeline.world.grammar import split_compositions

    pipe = StableDiffusionXLPipeline.from_pretrained(args.model)
    prompts = [c.prompt for c in split_compositions(0, 0.1, 0.1)["test"][: args.images]]
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with torch.no_grad():
        pixels = render_batch(prompts, resolution, np.random.default_rng(0))
        x0 = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        embeds, pooled = encode_prompts((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2), prompts)
    cond = {"prompt_embeds": embeds, "pooled": pooled, "time_ids": time_ids(resolution, len(prompts))}
    schedule = noise_schedule(pipe)  # the model's own (its prediction type: ε or v)
    scheduler = inverse_scheduler(schedule, args.steps)
    print(f"{args.images} test-prompt renders, K = {args.steps}, guidance 1 (prompt only)")
    print(f"{'R':>3} {'UNet passes':>12} {'relative MSE of x0':>20}")
    for r in range(4):
        trajectory = renoise_inversion(pipe.unet, x0, cond, scheduler, InversionConfig(num_steps=args.steps, renoise_iterations=r))
        back = ddim_reconstruct(pipe.unet, trajectory[-1], cond, schedule, args.steps)
        error = ((back - x0) ** 2).mean() / (x0**2).mean()
        print(f"{r:>3} {args.steps * (r + 1):>12} {error.item():>20.4f}")


if __name__ == "__main__":
    main()
