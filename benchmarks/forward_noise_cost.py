"""What SmPO's inversion costs per training step: Diffusion-DPO (random forward noise), SmPO with the
cached ReNoise trajectory, and SmPO with the trajectory recomputed online by the policy (the
official code), on the same model and the same batch of pairs.

    .venv/bin/python benchmarks/forward_noise_cost.py [--model data/01_raw/base_model] [--pairs 16] [--steps 6]

Prints the three step times and the ratios the cache issue sets as bars: cached ÷ DPO ≤ 1.15 and
online ÷ cached ≥ 4.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/01_raw/base_model")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--num-steps", type=int, default=10, help="K")
    parser.add_argument("--renoise", type=int, default=1, help="R")
    args = parser.parse_args()

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # offline, telemetry off
    from diffusers import StableDiffusionXLPipeline

    from smpo_pipeline.inversion import InversionConfig, inverse_scheduler, renoise_inversion
    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler, noise_schedule
    from smpo_pipeline.training.step import PairBatch, preference_loss

    pipe = StableDiffusionXLPipeline.from_pretrained(args.model)
    policy, reference = pipe.unet.train(), copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    schedule = noise_schedule(pipe)  # the model's own: its ᾱ and its target
    alphas = build_training_scheduler(schedule).alphas_cumprod
    inv = InversionConfig(num_steps=args.num_steps, renoise_iterations=args.renoise)
    scheduler = inverse_scheduler(schedule, args.num_steps)
    g = torch.Generator().manual_seed(0)
    b, c, s = args.pairs, pipe.unet.config.in_channels, pipe.unet.config.sample_size
    latents = torch.randn(2 * b, c, s, s, generator=g)
    embeds, pooled = torch.randn(b, 16, 64, generator=g), torch.randn(b, 32, generator=g)
    tids = torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(b, 1)
    cond = {"prompt_embeds": embeds.repeat(2, 1, 1), "pooled": pooled.repeat(2, 1), "time_ids": tids.repeat(2, 1)}
    traj = renoise_inversion(reference, latents, cond, scheduler, inv).transpose(0, 1)  # what the cache holds
    batch = PairBatch(latents[:b], latents[b:], embeds, pooled, tids, torch.full((b,), 0.6), traj[:b], traj[b:])

    def step(mode, objective):
        t = torch.randint(0, 1000, (b,), generator=g)
        start = time.perf_counter()
        loss, _ = preference_loss(policy, reference, batch, t, objective, 5000.0, 10.0, mode, alphas, g, scheduler, inv,
                                  prediction_type=schedule["prediction_type"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    results = {}
    for name, mode, objective in (("Diffusion-DPO (random noise)", "none", "dpo"),
                                  ("SmPO, cached trajectory", "cached", "smpo"),
                                  (f"SmPO, online inversion (K={args.num_steps}, R={args.renoise})", "online", "smpo")):
        step(mode, objective)  # warm-up
        results[name] = statistics.median(step(mode, objective) for _ in range(args.steps))
    print(f"{args.pairs} pairs per step, {torch.get_num_threads()} threads, median of {args.steps} steps")
    for name, seconds in results.items():
        print(f"  {name:<45} {seconds * 1000:8.1f} ms/step")
    dpo, cached, online = results.values()
    print(f"cached / DPO    = {cached / dpo:.2f}   (bar: <= 1.15)")
    print(f"online / cached = {online / cached:.2f}   (bar: >= 4)")


if __name__ == "__main__":
    main()
