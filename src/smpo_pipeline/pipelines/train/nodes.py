"""Nodes of the ``train`` pipeline: thin adapters over ``smpo_pipeline.training``."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from smpo_pipeline.evaluation import oracle_rewards, prompt_seed_grid
from smpo_pipeline.params import CacheParams, TrainParams, WorldParams

log = logging.getLogger(__name__)


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
        _clear_curve(objective)
        return NotTrained(objective, "left out of train.objectives"), {}, {"objective": objective, "trained": False}
    runs = {seed: _train_seed(objective, seed, preference_pairs, base_model, cache_report, prompts_validation, train,
                              cache) for seed in train.seeds}
    first = train.seeds[0]
    trained = type(base_model)(**{**base_model.components, "unet": runs[first][0]})
    replicas = {seed: unet for seed, (unet, _) in runs.items() if seed != first}
    summary = runs[first][1] | {"seeds": list(train.seeds),
                                "per_seed": {str(seed): run_summary for seed, (_, run_summary) in runs.items()}}
    return trained, replicas, summary


def _live_dir(objective: str, other_seed: int | None = None) -> str:
    """dvclive's directory of an objective's first seed, or of one of its other seeds."""
    return f"reports/training/{objective}" + ("" if other_seed is None else f"_seed-{other_seed}")


def _clear_curve(objective: str) -> None:
    """An objective left out of this run has no learning curve: its dvclive plots folder is left
    empty (it is a declared output of DVC's train stage, so it must exist), as its model folder
    holds only the ``NotTrained`` marker. Its runs' curves stay with their checkpoints."""
    import shutil

    plots = Path(_live_dir(objective)) / "plots" / "metrics"  # where dvclive writes a run's curves
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)


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
        rewards = oracle_rewards(pipe, *prompt_seed_grid(prompts, 1), protocol, e.batch_size, progress=False)
        return {"validation_reward": float(rewards.mean())}

    return evaluate


def _train_seed(objective: str, seed: int, preference_pairs, base_model, cache_report: dict,
                prompts_validation: list[str], train: TrainParams, cache: CacheParams):
    """One training run: (trained UNet, summary). Its checkpoints live under a key of everything it
    depends on (``keys.run_key``), so a re-run with the same inputs resumes (or finds the run
    finished) and any change starts afresh."""
    from smpo_pipeline.keys import run_description, run_key
    from smpo_pipeline.training.data import CachedPairs
    from smpo_pipeline.training.runs import RunHistory, reuse, run_inputs, train_config

    run = run_inputs(objective, preference_pairs, base_model, cache_report, train, cache)
    config = train_config(objective, train, run["noise"], seed)
    read = [*CachedPairs.COLUMNS] + (["r_w", "r_l"] if objective == "dro" else [])
    # The learning curve is part of the run's outputs: the settings that measure it are part of its key.
    curve = train.evaluation.model_dump(include={"every", "curve_prompts", "steps", "guidance_scale"})
    description = run_description(config, run["prints"], run["pairs"], read, processes=train.num_processes,
                                  inversion=asdict(run["inversion"]) if run["noise"] == "cached" else None, curve=curve)
    run_id = run_key(description)
    config = replace(config, checkpoint_dir=str(Path(train.checkpoint_root) / objective / run_id),
                     checkpoint_every=train.checkpoint_every, keep_last=train.keep_last)
    done, reused, changes = reuse(config.checkpoint_dir, train.steps, description)
    if reused == "finished":
        log.info("%s (seed %d): run %s is finished (%d steps): reusing it, nothing to train", objective, seed, run_id, done)
    elif done:
        log.info("%s (seed %d): resuming run %s at step %d of %d", objective, seed, run_id, done, train.steps)
    else:
        log.info("%s (seed %d): %s, starting run %s", objective, seed,
                 f"changed since the last run: {', '.join(changes)}" if changes else "no earlier run", run_id)
    live_dir = _live_dir(objective, None if seed == train.seeds[0] else seed)
    history = RunHistory(config.checkpoint_dir, done)
    new, policy = _run_logged(run, config, base_model, prompts_validation, train, cache, live_dir, history)
    records = history.earlier + new
    tail = records[-min(20, len(records)):]
    summary = {"objective": objective, "trained": True, "seed": seed, "run_id": run_id, "reuse": reused,
               "changed_since_last_run": changes,
               "forward_noise": run["noise"], "pair_order": train.order_for(objective), "pairs": len(run["pairs"]),
               "checkpoints": config.checkpoint_dir, "steps_run_now": len(new),
               "steps": train.steps, "zero_stage": train.zero_stage if config.deepspeed else None,
               "processes": train.num_processes, "lora_rank": train.lora.rank, "precision": train.precision,
               "final_loss": round(float(np.mean([r["loss"] for r in tail])), 5) if tail else None,
               "final_implicit_accuracy": round(float(np.mean([r["implicit_accuracy"] for r in tail])), 4) if tail else None,
               "seconds_per_step": round(float(np.mean([r["step_time"] for r in records])), 4) if records else None,
               "curve": _curve(records, history.start)}
    log.info("Trained %s (seed %d): %s", objective, seed, summary)
    return policy, summary


def _run_logged(run: dict, config, base_model, prompts_validation: list[str], train: TrainParams, cache: CacheParams,
                live_dir: str, history):
    """Train (in this process, or in ``train.num_processes`` ranks) with every step's record sent
    to dvclive and kept in the run's ``history``; returns (the records of the steps run now, the
    trained UNet)."""
    from dvclive import Live

    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.training.launch import train_in_processes
    from smpo_pipeline.training.trainer import train_preference

    records = []
    with Live(dir=live_dir, resume=bool(history.earlier), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        def collect(step: int, record: dict) -> None:
            records.append(record)
            history.append(record)
            for name, value in record.items():
                if name != "step":
                    live.log_metric(name, value)
            live.next_step()

        if train.num_processes > 1:
            ranks_records, policy = train_in_processes(
                base_model, run["pairs"], run["experts"], config, run["inversion"], num_processes=train.num_processes,
                cache_root=cache.root, storage_dtype=cache.storage_dtype, launcher=train.launcher,
                hostfile=train.hostfile, launch_dir=train.launch_dir)
            for step, record in enumerate(ranks_records):
                collect(step, record)
        else:
            resolution = base_model.unet.config.sample_size * base_model.vae_scale_factor
            hook = _validation_curve(base_model, prompts_validation, train, resolution)
            if hook and history.start is None:
                history.keep_start(hook(base_model.unet))
            policy = train_preference(copy.deepcopy(base_model.unet), run["data"], config, run["inversion"],
                                      noise_schedule(base_model), collect, run["experts"], hook)
    return records, policy


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
    """SmPO: smoothed-probability weights, forward noise from ``train.forward_noise``."""
    return train_objective("smpo", preference_pairs, base_model, cache_report, prompts_validation, train, cache)


def train_dro(preference_pairs, base_model, cache_report: dict, prompts_validation: list[str], train: TrainParams,
              cache: CacheParams):
    """Diffusion-DRO: expert images (``train.dro.experts``) against the policy's own samples."""
    return train_objective("dro", preference_pairs, base_model, cache_report, prompts_validation, train, cache)


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
                                  train: TrainParams, world: WorldParams, dpo_training_summary: dict,
                                  smpo_training_summary: dict, dro_training_summary: dict) -> dict:
    """Mean shapes-oracle reward of every model on the validation prompts, the same seeds for all,
    and what each run reused: per objective and seed its run id, whether it was new, resumed or
    finished, what changed since the objective's last run, and the steps trained now."""
    from smpo_pipeline.models.sampling import SamplingProtocol

    e = train.evaluation
    prompts_validation = prompts_validation[: e.max_prompts] if e.max_prompts else prompts_validation
    prompts, seeds = prompt_seed_grid(prompts_validation, e.seeds_per_prompt)
    protocol = SamplingProtocol(e.steps, e.guidance_scale, world.resolution)
    report = {"protocol": protocol.__dict__ | {"prompt_set": "validation", "images_per_model": len(prompts)}, "models": {}}
    trained = {"dpo": dpo_model, "smpo": smpo_model, "dro": dro_model}
    for name, model in [("base", base_model)] + [(o, trained[o]) for o in train.objectives]:
        rewards = oracle_rewards(model, prompts, seeds, protocol, e.batch_size, desc=f"validating {name}")
        report["models"][name] = {"mean_oracle_reward": round(float(rewards.mean()), 4),
                                  "standard_error": round(float(rewards.std(ddof=1) / np.sqrt(len(rewards))), 4)}
    report["runs"] = {summary["objective"]: {seed: {k: run.get(k) for k in ("run_id", "reuse", "changed_since_last_run",
                                                                          "steps_run_now")}
                                             for seed, run in summary.get("per_seed", {}).items()}
                      for summary in (dpo_training_summary, smpo_training_summary, dro_training_summary)
                      if summary.get("trained")}
    base = report["models"]["base"]["mean_oracle_reward"]
    for name, r in report["models"].items():
        r["vs_base"] = round(r["mean_oracle_reward"] - base, 4)
        print(f"{name:>5}: mean shapes-oracle reward {r['mean_oracle_reward']:.4f} ± {r['standard_error']:.4f}"  # noqa: T201
              f" ({r['vs_base']:+.4f} vs base)")
    return report
