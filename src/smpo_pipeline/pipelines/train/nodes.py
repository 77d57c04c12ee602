"""Nodes of the ``train`` pipeline: thin adapters over ``smpo_pipeline.training``."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from smpo_pipeline.checksums import frame_digest
from smpo_pipeline.params import CacheParams, TrainParams, WorldParams

log = logging.getLogger(__name__)


def _check_cache(cache_report: dict, prints, inversion, trajectories: bool = True) -> None:
    """The cache must have been built from this base model, and, where the run reads cached
    trajectories, with them and these inversion settings."""
    wanted = {"reference_unet": prints.unet, "vae": prints.vae, "text_encoders": prints.text}
    if trajectories:
        wanted |= {"inversion": asdict(inversion), "trajectories": True}
    if not any(all(b.get(k, True if k == "trajectories" else None) == v for k, v in wanted.items())
               for b in cache_report.get("built_with", [])):
        raise ValueError(f"the training cache was built with {cache_report.get('built_with')}, not with the current "
                         f"base model{' and cache.inversion' if trajectories else ''} {wanted}: rebuild it with "
                         "`kedro run --pipeline cache`" + (" (cache.trajectories: true)" if trajectories else ""))


def _train_config(objective: str, train: TrainParams, noise: str, seed: int | None = None):
    """The trainer's config for one (objective, seed), built from the parameters by name."""
    from smpo_pipeline.training.replay import SamplerConfig
    from smpo_pipeline.training.trainer import DROConfig, TrainConfig

    ds = None
    if train.deepspeed_config:
        ds = json.loads(Path(train.deepspeed_config).read_text())
        ds["zero_optimization"] = ds.get("zero_optimization", {}) | {"stage": train.zero_stage}
    d = train.dro
    return TrainConfig(
        objective=objective, beta=train.beta.get(objective, 0.0), gamma=train.gamma, inversion=noise,
        steps=train.steps, batch_size=train.batch_size, learning_rate=train.lr_for(objective),
        warmup_steps=train.warmup_steps, grad_clip=train.grad_clip, caption_dropout=train.caption_dropout,
        seed=train.seeds[0] if seed is None else seed, deepspeed=ds, evaluate_every=train.evaluation.every,
        gradient_accumulation=train.gradient_accumulation, optimizer=train.optimizer, weight_decay=train.weight_decay,
        lr_schedule=train.lr_schedule, gradient_checkpointing=train.gradient_checkpointing, precision=train.precision,
        lora_rank=train.lora.rank, lora_alpha=train.lora.alpha, timestep_range=tuple(train.timestep_range),
        min_snr_gamma=train.min_snr_gamma, latents=train.latents,
        dro=DROConfig(margin=d.margin, refresh_every=d.refresh_every, buffer_size=d.buffer_size,
                      sampler=SamplerConfig(steps=d.sampler_steps, guidance_scale=d.sampler_guidance, jitter=d.jitter)),
    )


def train_objective(objective: str, preference_pairs, base_model, cache_report: dict, prompts_validation: list[str],
                    train: TrainParams, cache: CacheParams):
    """Fine-tune the base model's UNet with ``objective`` on the train split, once per seed of
    ``train.seeds``, reading latents, embeddings and (SmPO, cached) trajectories from the cache.
    Returns the full SDXL pipeline trained with the first seed (LoRA merged), the UNets of the other
    seeds (replicas, for the evaluation's intervals), and a summary of the runs; per-step metrics go
    to dvclive under ``reports/training/<objective>/`` (``<objective>_seed-<k>/`` for the other seeds). An
    objective that ``train.objectives`` leaves out returns a ``NotTrained`` marker and no replicas."""
    from smpo_pipeline.datasets import NotTrained

    if objective not in train.objectives:
        log.info("train.objectives leaves out %s: it is not trained in this run", objective)
        return NotTrained(objective, "left out of train.objectives"), {}, {"objective": objective, "trained": False}
    runs = {seed: _train_seed(objective, seed, preference_pairs, base_model, cache_report, prompts_validation, train,
                              cache) for seed in train.seeds}
    first = train.seeds[0]
    trained = type(base_model)(**{**base_model.components, "unet": runs[first][0]})
    replicas = {seed: unet for seed, (unet, _) in runs.items() if seed != first}
    summary = runs[first][1] | {"seeds": list(train.seeds),
                                "per_seed": {str(seed): run_summary for seed, (_, run_summary) in runs.items()}}
    return trained, replicas, summary


def _validation_curve(base_model, prompts_validation: list[str], train: TrainParams, resolution: int):
    """The trainer's evaluate hook: mean shapes-oracle reward of the policy on the first
    ``train.evaluation.curve_prompts`` validation prompts (one image each, the same seeds at every
    point). None when no curve is asked for, or the policy is not fp32 (the pipeline samples in fp32)."""
    from smpo_pipeline.models.sampling import SamplingProtocol

    e = train.evaluation
    if not e.every or train.precision != "fp32":
        return None
    prompts = prompts_validation[: e.curve_prompts]
    protocol = SamplingProtocol(e.steps, e.guidance_scale, resolution)

    def evaluate(unet) -> dict:
        pipe = type(base_model)(**{**base_model.components, "unet": unet})
        rewards = oracle_rewards(pipe, prompts, list(range(len(prompts))), protocol, e.batch_size, progress=False)
        return {"validation_reward": float(rewards.mean())}

    return evaluate


def _train_seed(objective: str, seed: int, preference_pairs, base_model, cache_report: dict,
                prompts_validation: list[str], train: TrainParams, cache: CacheParams):
    """One training run: (trained UNet, summary)."""
    from diffusers import DDPMScheduler
    from dvclive import Live

    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.tiny_sdxl import NOISE_SCHEDULE
    from smpo_pipeline.smoothing import training_pairs
    from smpo_pipeline.training.checkpoints import latest
    from smpo_pipeline.training.trainer import CachedExperts, CachedPairs, expert_pool, train_preference
    from smpo_pipeline.training_cache import CacheReader, Fingerprints

    inv = cache.inversion
    inversion = InversionConfig(inv.num_steps, inv.renoise_iterations, inv.guidance_scale)
    noise = train.inversion if objective == "smpo" else "none"
    pairs = training_pairs(preference_pairs, train.order_for(objective), train.smoothing_by, train.gamma)
    prints = Fingerprints.of(base_model, inversion)
    _check_cache(cache_report, prints, inversion, trajectories=noise == "cached")
    reader = CacheReader(Path(cache.root))
    data = CachedPairs(pairs, reader, prints, noise == "cached")
    experts = None
    if objective == "dro":
        experts = CachedExperts(expert_pool(pairs, train.dro.experts, train.dro.top_k), reader, prints)
    config = _train_config(objective, train, noise, seed)
    # Checkpoints of one run live under a hash of everything the run depends on — its settings, the
    # weights it starts from and reads through the cache, the inversion settings of cached
    # trajectories, and every value it reads from the pairs (a new τ, order or reward model changes
    # p or the winners) — so a re-run with the same inputs resumes (or finds the run finished) and
    # any change starts afresh.
    read = [*CachedPairs.COLUMNS] + (["r_w", "r_l"] if objective == "dro" else [])
    run_id = hashlib.sha256(json.dumps([asdict(config), prints.unet, prints.vae, prints.text,
                                        asdict(inversion) if noise == "cached" else None, train.num_processes,
                                        frame_digest(pairs, read)], default=str).encode()).hexdigest()[:12]
    config = replace(config, checkpoint_dir=str(Path(train.checkpoint_root) / objective / run_id),
                     checkpoint_every=train.checkpoint_every, keep_last=train.keep_last)
    found = latest(config.checkpoint_dir)
    resuming = found is not None  # dvclive then continues its step count
    done_steps = int(found.name.split("-")[1]) if found else 0
    reuse = ("finished" if done_steps >= train.steps else f"resumed at step {done_steps}") if found else "new"
    log.info("%s (seed %d): %s run %s, %d of %d steps done", objective, seed,
             {"new": "starting", "finished": "reusing the finished"}.get(reuse, "resuming"), run_id, done_steps,
             train.steps)
    records, start = [], None
    if train.num_processes > 1:
        records, policy = _train_in_processes(objective, base_model, pairs, experts, config, inversion, train, cache)
    live_dir = f"reports/training/{objective}" + ("" if seed == train.seeds[0] else f"_seed-{seed}")
    with Live(dir=live_dir, resume=resuming, dvcyaml=False, save_dvc_exp=False, report=None) as live:
        def log_step(record: dict) -> None:
            for name, value in record.items():
                if name != "step":
                    live.log_metric(name, value)
            live.next_step()

        if train.num_processes > 1:
            for record in records:
                log_step(record)
        else:
            def collect(step: int, record: dict) -> None:
                records.append(record)
                log_step(record)

            resolution = base_model.unet.config.sample_size * base_model.vae_scale_factor
            hook = _validation_curve(base_model, prompts_validation, train, resolution)
            start = hook(base_model.unet) if hook and not resuming else None
            policy = train_preference(copy.deepcopy(base_model.unet), data, config, inversion,
                                      DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod, collect, experts, hook)
    tail = records[-min(20, len(records)):]
    summary = {"objective": objective, "trained": True, "seed": seed, "run_id": run_id, "reuse": reuse,
               "forward_noise": noise, "pair_order": train.order_for(objective), "pairs": len(pairs),
               "checkpoints": config.checkpoint_dir, "steps_run_now": len(records),
               "steps": train.steps, "zero_stage": train.zero_stage if config.deepspeed else None,
               "processes": train.num_processes, "lora_rank": train.lora.rank, "precision": train.precision,
               "final_loss": round(float(np.mean([r["loss"] for r in tail])), 5) if tail else None,
               "final_implicit_accuracy": round(float(np.mean([r["implicit_accuracy"] for r in tail])), 4) if tail else None,
               "seconds_per_step": round(float(np.mean([r["step_time"] for r in records])), 4) if records else None,
               "curve": _curve(records, start)}
    log.info("Trained %s (seed %d): %s", objective, seed, summary)
    return policy, summary


def _train_in_processes(objective, base_model, pairs, experts, config, inversion, train: TrainParams, cache: CacheParams):
    """Run ``smpo_pipeline.training.launch`` with ``train.num_processes`` ranks, under torchrun on this
    machine or under DeepSpeed's launcher (``train.hostfile``: several nodes, ``train.launch_dir`` on
    storage they share)."""
    import subprocess
    import tempfile

    from safetensors.torch import load_file

    from smpo_pipeline.runtime import deepspeed_command, torchrun_command

    with tempfile.TemporaryDirectory(dir=train.launch_dir) as tmp:
        tmp = Path(tmp).resolve()
        base_model.save_pretrained(tmp / "model")
        pairs.to_parquet(tmp / "pairs.parquet")
        spec = {"model": str(tmp / "model"), "cache": str(Path(cache.root).resolve()), "pairs": str(tmp / "pairs.parquet"),
                "config": asdict(config), "inversion": asdict(inversion), "output": str(tmp / "out"),
                "threads_per_rank": 1}
        if experts is not None:
            experts.pairs.to_parquet(tmp / "experts.parquet")
            spec["experts"] = str(tmp / "experts.parquet")
        (tmp / "spec.json").write_text(json.dumps(spec))
        if train.launcher == "deepspeed":
            command = deepspeed_command(train.hostfile, train.num_processes, "smpo_pipeline.training.launch",
                                        str(tmp / "spec.json"))
        else:
            command = torchrun_command(train.num_processes, "smpo_pipeline.training.launch", str(tmp / "spec.json"))
        log.info("Launching %s on %d processes: %s", objective, train.num_processes, " ".join(command))
        subprocess.run(command, check=True)
        written = sorted((tmp / "out").glob("rank*.sha256"))
        if len(written) != train.num_processes:
            raise RuntimeError(f"{objective}: {len(written)} ranks ran, train.num_processes is {train.num_processes}")
        digests = {path.read_text() for path in written}
        if len(digests) != 1:
            raise RuntimeError(f"{objective}: the {train.num_processes} ranks ended with different weights")
        policy = copy.deepcopy(base_model.unet)
        policy.load_state_dict(load_file(tmp / "out" / "unet.safetensors"))
        records = [json.loads(line) for line in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    return records, policy.eval()


def _curve(records: list[dict], start: dict | None = None) -> list[dict]:
    """(step, validation reward, CPU seconds of training so far) wherever the hook measured it,
    from the base model's point (step 0) on when ``start`` holds it."""
    points, cpu = [], 0.0
    if start:
        points.append({"step": 0, "validation_reward": round(start["validation_reward"], 5), "cpu_seconds": 0.0})
    for step, record in enumerate(records, start=1):
        cpu += record.get("cpu_time", 0.0)
        if "validation_reward" in record:
            points.append({"step": step, "validation_reward": round(record["validation_reward"], 5),
                           "cpu_seconds": round(cpu, 1)})
    return points


def train_dpo(preference_pairs, base_model, cache_report: dict, prompts_validation: list[str], train: TrainParams,
              cache: CacheParams):
    """Diffusion-DPO: random forward noise, β from ``train.beta.dpo``."""
    return train_objective("dpo", preference_pairs, base_model, cache_report, prompts_validation, train, cache)


def train_smpo(preference_pairs, base_model, cache_report: dict, prompts_validation: list[str], train: TrainParams,
               cache: CacheParams):
    """SmPO: smoothed-probability weights, forward noise from ``train.inversion``."""
    return train_objective("smpo", preference_pairs, base_model, cache_report, prompts_validation, train, cache)


def train_dro(preference_pairs, base_model, cache_report: dict, prompts_validation: list[str], train: TrainParams,
              cache: CacheParams):
    """Diffusion-DRO: expert images (``train.dro.experts``) against the policy's own samples."""
    return train_objective("dro", preference_pairs, base_model, cache_report, prompts_validation, train, cache)


def oracle_rewards(model, prompts: list[str], seeds: list[int], protocol, batch_size: int, **generate_args):
    """The shapes-oracle reward of ``model``'s image for every (prompt, seed)."""
    from smpo_pipeline.models.sampling import generate
    from smpo_pipeline.world.oracle import oracle_reward

    images = generate(model, prompts, seeds, protocol, batch_size, **generate_args)
    return np.array([oracle_reward(i, p) for i, p in zip(images, prompts, strict=True)])


def plot_learning_curves(dpo_training_summary: dict, smpo_training_summary: dict, dro_training_summary: dict,
                         train: TrainParams):
    """Validation reward against optimiser steps and against CPU seconds of training, one line per
    objective (the mean over ``train.seeds``) with a band from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for summary in (dpo_training_summary, smpo_training_summary, dro_training_summary):
        runs = [run["curve"] for run in summary.get("per_seed", {}).values() if run.get("curve")]
        if not runs:
            continue
        n = min(len(curve) for curve in runs)
        reward = np.array([[p["validation_reward"] for p in curve[:n]] for curve in runs])
        for ax, key in zip(axes, ("step", "cpu_seconds"), strict=True):
            x = np.mean([[p[key] for p in curve[:n]] for curve in runs], axis=0)
            line = ax.plot(x, reward.mean(axis=0), marker="o", markersize=3,
                           label=f"{summary['objective']} ({len(runs)} seed{'s' * (len(runs) > 1)})")[0]
            ax.fill_between(x, reward.min(axis=0), reward.max(axis=0), color=line.get_color(), alpha=0.2)
    axes[0].set(xlabel="optimiser step", ylabel=f"mean shapes-oracle reward ({train.evaluation.curve_prompts} "
                "validation prompts)", title="Learning curves")
    axes[1].set(xlabel="CPU seconds of training (mean over seeds)", title="… against training cost")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def compare_on_validation_prompts(base_model, dpo_model, smpo_model, dro_model, prompts_validation: list[str],
                                  train: TrainParams, world: WorldParams) -> dict:
    """Mean shapes-oracle reward of every model on the validation prompts, the same seeds for all."""
    from smpo_pipeline.models.sampling import SamplingProtocol

    e = train.evaluation
    prompts_validation = prompts_validation[: e.max_prompts] if e.max_prompts else prompts_validation
    prompts = [p for p in prompts_validation for _ in range(e.seeds_per_prompt)]
    seeds = list(range(len(prompts)))
    protocol = SamplingProtocol(e.steps, e.guidance_scale, world.resolution)
    report = {"protocol": protocol.__dict__ | {"prompt_set": "validation", "images_per_model": len(prompts)}, "models": {}}
    trained = {"dpo": dpo_model, "smpo": smpo_model, "dro": dro_model}
    for name, model in [("base", base_model)] + [(o, trained[o]) for o in train.objectives]:
        rewards = oracle_rewards(model, prompts, seeds, protocol, e.batch_size, desc=f"validating {name}")
        report["models"][name] = {"mean_oracle_reward": round(float(rewards.mean()), 4),
                                  "standard_error": round(float(rewards.std(ddof=1) / np.sqrt(len(rewards))), 4)}
    base = report["models"]["base"]["mean_oracle_reward"]
    for name, r in report["models"].items():
        r["vs_base"] = round(r["mean_oracle_reward"] - base, 4)
        print(f"{name:>5}: mean shapes-oracle reward {r['mean_oracle_reward']:.4f} ± {r['standard_error']:.4f}"  # noqa: T201
              f" ({r['vs_base']:+.4f} vs base)")
    return report
