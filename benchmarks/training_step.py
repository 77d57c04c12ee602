"""Training-step throughput and peak memory of each objective: Diffusion-DPO, SmPO with the cached
trajectory, SmPO with online inversion (the official code) and Diffusion-DRO (its online sampling
included), on the same model and batch, with achieved TFLOP/s (FLOPs counted by
``torch.utils.flop_counter`` over one step).

    .venv/bin/python benchmarks/training_step.py                  # the embedded base model, CPU
    python benchmarks/training_step.py --model sdxl --pairs 1     # full-size SDXL UNet, random
                                                                  # weights, 1024 px, bf16, GPU
    .venv/bin/python benchmarks/training_step.py --pairs 32 --objectives dpo --compile   # TorchInductor
    .venv/bin/python benchmarks/training_step.py --pairs 32 --objectives dpo --channels-last

Each objective runs in its own process so that its peak memory is its own (peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on a GPU). ``--model sdxl`` builds the UNet from its published
config (``smpo_pipeline.models.sdxl``; no download) in bf16 with gradient checkpointing and Adafactor,
on a CUDA GPU; ``--device cpu --resolution 128`` runs the same code on a CPU with 24 GiB (a smoke
run: its times say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

OBJECTIVES = ("dpo", "smpo-cached", "smpo-online", "dro")


def _setup(args):
    import torch

    from smpo_pipeline.inversion import InversionConfig, inverse_scheduler, renoise_inversion
    from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE, noise_schedule
    from smpo_pipeline.training.step import PairBatch

    device = args.device or ("cuda" if args.model == "sdxl" else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: pass --device cpu to run the same code on the CPU")
    if args.model == "sdxl":
        from smpo_pipeline.models.sdxl import build_sdxl_unet

        unet = build_sdxl_unet(device, torch.bfloat16)
        # The latent side follows the pixel side (VAE factor 8); the UNet itself is size-agnostic.
        unet.register_to_config(sample_size=args.resolution // 8)
        tokens, width, pooled_dim, size = 77, 2048, 1280, args.resolution
        schedule = NOISE_SCHEDULE  # SDXL's own
    else:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(args.model)
        unet = pipe.unet.to(device)
        tokens, width = pipe.tokenizer.model_max_length, unet.config.cross_attention_dim
        pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        size = unet.config.sample_size * pipe.vae_scale_factor
        schedule = noise_schedule(pipe)  # the model's own: its ᾱ and its target (ε or v)
    if args.channels_last:  # NHWC: oneDNN's preferred layout for CPU convolutions
        unet = unet.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(unet).eval().requires_grad_(False)
    policy = unet.train()
    if args.compile:  # TorchInductor; the first steps (the warm-up below) pay for the compilation
        policy, reference = torch.compile(policy), torch.compile(reference)
    if args.gradient_checkpointing or args.model == "sdxl":
        policy.enable_gradient_checkpointing()
    optimizer = (torch.optim.Adafactor if args.model == "sdxl" else torch.optim.AdamW)(policy.parameters(), lr=1e-6)
    dtype = next(policy.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    b, c, s = args.pairs, unet.config.in_channels, unet.config.sample_size
    latents = torch.randn(2 * b, c, s, s, generator=g).to(device, dtype)
    embeds = torch.randn(b, tokens, width, generator=g).to(device, dtype)
    pooled = torch.randn(b, pooled_dim, generator=g).to(device, dtype)
    tids = torch.tensor([[size, size, 0, 0, size, size]], dtype=dtype).repeat(b, 1).to(device)
    inv = InversionConfig(num_steps=args.num_steps, renoise_iterations=args.renoise)
    scheduler = inverse_scheduler(schedule, args.num_steps)
    cond = {"prompt_embeds": embeds.repeat(2, 1, 1), "pooled": pooled.repeat(2, 1), "time_ids": tids.repeat(2, 1)}
    with torch.no_grad():  # what the cache holds: the reference's trajectories
        traj = renoise_inversion(reference, latents, cond, scheduler, inv).transpose(0, 1)
    batch = PairBatch(latents[:b], latents[b:], embeds, pooled, tids, torch.full((b,), 0.6, device=device),
                      traj[:b], traj[b:])
    return policy, reference, optimizer, batch, scheduler, inv, device, size, schedule


def run_one(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from smpo_pipeline.models.tiny_sdxl import build_training_scheduler
    from smpo_pipeline.training.replay import SamplerConfig, sample_policy_states
    from smpo_pipeline.training.step import DROBatch, dro_batch_loss, preference_loss

    policy, reference, optimizer, batch, scheduler, inv, device, size, schedule = _setup(args)
    alphas = build_training_scheduler(schedule).alphas_cumprod.to(device)
    target = schedule["prediction_type"]
    g = torch.Generator().manual_seed(1)
    b = len(batch)

    def loss_of(objective):
        t = torch.randint(0, 1000, (b,), generator=g).to(device)
        if objective == "dro":  # M = 1: a fresh policy state per row every step, then the hinge
            cond = {"prompt_embeds": batch.prompt_embeds, "pooled": batch.pooled, "time_ids": batch.time_ids}
            x_t, ts, eps = sample_policy_states(policy, cond, batch.latents_w.shape[1:], schedule,
                                                SamplerConfig(steps=args.sampler_steps), g)
            dro = DROBatch(batch.latents_w, batch.prompt_embeds, batch.pooled, batch.time_ids, x_t, ts.to(device), eps)
            return dro_batch_loss(policy, reference, dro, 0.001, alphas, g, prediction_type=target)[0]
        mode = {"dpo": "none", "smpo-cached": "cached", "smpo-online": "online"}[objective]
        return preference_loss(policy, reference, batch, t, objective.split("-")[0], 5000.0, 10.0, mode, alphas, g,
                               scheduler, inv, prediction_type=target)[0]

    def step():
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = loss_of(args.only)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    warm_up = step()
    if args.compile:  # a second warm-up step (recompiles settle); FLOPs are not counted inside compiled graphs
        warm_up += step()
        flops = float("nan")
    else:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    seconds = statistics.median(step() for _ in range(args.steps))
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return {"objective": args.only, "seconds": seconds, "warm_up_seconds": warm_up, "peak_gib": peak,
            "tflops": flops / seconds / 1e12,
            "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads",
            "resolution": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/01_raw/base_model", help="a diffusers SDXL directory, or 'sdxl'")
    parser.add_argument("--pairs", type=int, default=16, help="pairs (DRO: rows) per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=10, help="K, the inversion grid")
    parser.add_argument("--renoise", type=int, default=1, help="R")
    parser.add_argument("--sampler-steps", type=int, default=20, help="DRO's DPM-Solver++ steps")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--channels-last", action="store_true", help="the UNets in channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile both UNets (TorchInductor)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda for --model sdxl, else cpu")
    parser.add_argument("--resolution", type=int, default=1024, help="--model sdxl: pixel side (latent = /8)")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--only", choices=OBJECTIVES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # offline, telemetry off

    if args.only:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for objective in args.objectives:
        command = [sys.executable, __file__, *sys.argv[1:], "--only", objective]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"{objective} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.model}, {rows[0]['resolution']} px, {args.pairs} pairs per step, {rows[0]['device']}, "
          f"median of {args.steps} steps (each objective in its own process)")
    print(f"{'objective':<12} {'s/step':>8} {'steps/s':>8} {'warm-up s':>9} {'peak GiB':>9} {'TFLOP/s':>8} {'vs dpo':>7}")
    base = rows[0]["seconds"]
    for r in rows:
        print(f"{r['objective']:<12} {r['seconds']:8.3f} {1 / r['seconds']:8.2f} {r['warm_up_seconds']:9.1f} "
              f"{r['peak_gib']:9.2f} {r['tflops']:8.3f} {r['seconds'] / base:7.2f}")


if __name__ == "__main__":
    main()
