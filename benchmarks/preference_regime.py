"""Sweeps of the preference-training regime on the embedded world: each configuration (overrides of
``conf/base/parameters_train.yml``'s ``train`` section) trained with several seeds on the chain's own
pairs and training cache, its validation reward measured along the way. Prints a table of the gain
over the base model (mean over seeds, with the seeds' standard error and the implicit accuracy at the
end) and writes the curves as JSON and a plot. A configuration with ``ema: <decay>`` is measured
through an exponential moving average of its weights instead of the weights themselves; one with
``pairs_per_prompt: <n>`` trains on at most n of each prompt's pairs. A sweep's top-level ``train``
block overrides conf/base for all of its configurations (the defaults they were measured against).

    kedro run --pipelines data,rewards,cache        # once: the pairs and the cache it trains on
    .venv/bin/python benchmarks/preference_regime.py benchmarks/sweeps/regime.yml --seeds 0 1 2

Validation prompts only: the test prompts are never looked at. The sweep files under
``benchmarks/sweeps/`` are the ones behind ``docs/regime.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path


def load_chain(overrides: dict, extra: tuple[str, ...] = ()):
    """The catalog entries and validated parameters a training run reads (and ``extra`` entries),
    through Kedro's session."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(Path.cwd())
    with KedroSession.create(project_path=Path.cwd(), runtime_params=overrides) as session:
        context = session.load_context()
        catalog = context.catalog
        # Kedro hands parameters that nodes type as pydantic models over as those models.
        params = {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in context.params.items()}
        names = ("preference_pairs", "base_model", "cache_report", "prompts_validation", *extra)
        return {name: catalog.load(name) for name in names}, params


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s values, nested sections merged key by key."""
    return {**base, **{k: merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in extra.items()}}


def merged_train(params: dict, config: dict):
    """The ``train`` parameters with a configuration's overrides, validated (plain PyTorch)."""
    from smpo_pipeline.params import TrainParams

    return TrainParams.model_validate(merge(params["train"], config.get("train", {})) | {"deepspeed_config": None})


def run_context(chain: dict, params: dict, sweep: dict) -> str:
    """What a sweep's runs depend on besides their configuration: the base model's weights, every
    value of the pairs, the prompts, the evaluation schedule and the training code. Earlier runs are
    reused only under the same context."""
    from smpo_pipeline.keys import code_digest, digest, frame_digest
    from smpo_pipeline.models.sampling import model_fingerprint

    pairs = chain["preference_pairs"]
    return digest(model_fingerprint(chain["base_model"]), frame_digest(pairs, list(pairs.columns)),
                  sweep.get("prompts", 96), sweep.get("every", 50),
                  {k: params["train"]["evaluation"][k] for k in ("steps", "guidance_scale")},  # the sampling protocol
                  code_digest("smpo_pipeline.training.trainer"), length=16)


def run_setup(config: dict, seed: int, chain: dict, params: dict, every: int = 0) -> dict:
    """What the trainer is given for one configuration (``objective``, ``train`` overrides, optional
    ``order`` and ``tau``) and seed: its pairs from the chain's cache (``data``, DRO's ``experts``),
    its ``config``, the ``inversion`` settings and the base model's noise ``schedule``."""
    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.models.tiny_sdxl import noise_schedule
    from smpo_pipeline.params import CacheParams
    from smpo_pipeline.smoothing import preference_probability, training_pairs
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.data import CachedExperts, CachedPairs, expert_pool
    from smpo_pipeline.training.runs import check_cache, train_config

    train = merged_train(params, config)
    cache = CacheParams.model_validate(params["cache"])
    objective = config["objective"]
    base = chain["base_model"]
    inversion = InversionConfig.of(cache.inversion)
    noise = train.forward_noise if objective == "smpo" else "none"
    prints = Fingerprints.of(base, inversion, cache.storage_dtype)
    check_cache(chain["cache_report"], prints, inversion, trajectories=noise == "cached")
    # Each objective learns its own winner (train.pair_order); SFT the reward's unless `order` says otherwise.
    order = config.get("order", "reward") if objective == "sft" else train.order_for(objective)
    pairs = training_pairs(chain["preference_pairs"], order, train.smoothing_by, train.gamma)
    if "tau" in config:
        pairs = pairs.assign(p=preference_probability(pairs.r_w, pairs.r_l, config["tau"]))
    if "pairs_per_prompt" in config:
        pairs = at_most_per_prompt(pairs, config["pairs_per_prompt"])
    reader = CacheReader(Path(cache.root))
    data = CachedPairs(pairs, reader, prints, noise == "cached")
    experts = CachedExperts(expert_pool(pairs, train.dro.experts, train.dro.top_k), reader, prints) \
        if objective == "dro" else None
    e = train.evaluation
    config_ = train_config(objective, train.model_copy(update={"evaluation": e.model_copy(update={"every": every})}),
                            noise, seed)
    if objective == "sft":  # implicit accuracy measured as DPO's, for comparison
        config_ = replace(config_, beta=train.beta["dpo"])
    return {"data": data, "experts": experts, "config": config_, "inversion": inversion,
            "schedule": noise_schedule(base)}


def train_run(config: dict, seed: int, chain: dict, params: dict, evaluate=None, every: int = 0):
    """Train one configuration (see ``run_setup``) on the chain's pairs and cache with the project's
    trainer; returns (trained UNet, step records). ``evaluate(unet) -> dict`` is called every
    ``every`` steps and at the end."""
    from smpo_pipeline.training.trainer import train_preference

    setup = run_setup(config, seed, chain, params, every)
    records = []
    unet = train_preference(copy.deepcopy(chain["base_model"].unet), setup["data"], setup["config"],
                            setup["inversion"], setup["schedule"], lambda step, record: records.append(record),
                            setup["experts"], evaluate)
    return unet, records


def at_most_per_prompt(pairs, n: int):
    """At most ``n`` of each prompt's training pairs, the same ones for every seed and configuration
    (a fixed shuffle), so that a sweep over ``n`` varies how many pairs a prompt has and nothing else."""
    if n < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1 (got {n})")
    shuffled = pairs.sample(frac=1.0, random_state=0)
    return shuffled[shuffled.groupby("caption").cumcount() < n].sort_index().reset_index(drop=True)


def _ema_evaluation(base_unet, decay: float, evaluate, every: int, steps: int):
    """An evaluation hook, called after every step, that keeps an exponential moving average of
    the policy's weights, starting from the base model's (as the DRO paper's official recipe keeps
    one, and the bootstrap's pretraining does), and measures the average every ``every`` steps and
    at the end, in place of the policy."""
    import torch

    average = copy.deepcopy(base_unet).eval().requires_grad_(False)
    done = 0

    def hook(policy) -> dict:
        nonlocal done
        done += 1
        with torch.no_grad():
            for mean, weight in zip(average.parameters(), policy.parameters(), strict=True):
                mean.lerp_(weight.detach().float(), 1.0 - decay)
        return evaluate(average) if done % every == 0 or done == steps else {}

    return hook


def run(config: dict, seed: int, chain: dict, params: dict, prompts: int, every: int) -> dict:
    import numpy as np

    from smpo_pipeline.evaluation import oracle_rewards
    from smpo_pipeline.models.sampling import SamplingProtocol

    base = chain["base_model"]
    val = chain["prompts_validation"][:prompts]
    e = merged_train(params, config).evaluation
    protocol = SamplingProtocol(e.steps, e.guidance_scale, base.unet.config.sample_size * base.vae_scale_factor)

    def evaluate(unet) -> dict:
        pipe = type(base)(**{**base.components, "unet": unet})
        return {"validation_reward": float(oracle_rewards(pipe, val, list(range(len(val))), protocol,
                                                          e.batch_size, progress=False).mean())}

    start = time.perf_counter()
    if "ema" in config:  # measure an EMA of the policy instead of the policy (a drift guard)
        evaluate = _ema_evaluation(base.unet, config["ema"], evaluate, every, merged_train(params, config).steps)
        every = 1  # the hook updates the average after every step and measures it on its own schedule
    _, records = train_run(config, seed, chain, params, evaluate, every)
    cpu, curve = 0.0, []
    for step, record in enumerate(records, start=1):
        cpu += record["cpu_time"]
        if "validation_reward" in record:
            curve.append({"step": step, "validation_reward": record["validation_reward"], "cpu_seconds": cpu})
    tail = records[-20:]
    return {"curve": curve, "seconds": time.perf_counter() - start,
            "implicit_accuracy": float(np.mean([r["implicit_accuracy"] for r in tail]))}


# Settings a sweep's run never reads: it keeps no checkpoints.
_UNREAD = ("checkpoint_every", "checkpoint_root", "keep_last")


def _bearing(settings: dict) -> dict:
    """The settings a run's result depends on, to decide whether an earlier result still holds."""
    return {k: v for k, v in settings.items() if k not in _UNREAD}


def main() -> None:
    import numpy as np
    import yaml

    from smpo_pipeline.runtime import apply_project_environment

    apply_project_environment()  # offline, telemetry off

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="YAML: {name, prompts, every, train?: {...}, configs: [{name, objective, "
                                      "train: {...}, tau?, ema?, order?, pairs_per_prompt?}]}; objective dpo | smpo "
                                      "| dro | sft (the preferred images alone, by `order`: reward or label)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="reports/sweeps")
    parser.add_argument("--only", nargs="*", help="run only these configuration names")
    args = parser.parse_args()
    sweep = yaml.safe_load(Path(args.sweep).read_text())
    chain, params = load_chain({})
    # A sweep's own `train` block: the defaults its configurations were measured against, where they
    # differ from today's conf/base (the files of rounds 5-9 pin the regime of their time).
    params["train"] = merge(params["train"], sweep.get("train", {}))
    context = run_context(chain, params, sweep)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / f"{sweep['name']}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    base_reward = None
    for config in sweep["configs"]:
        if args.only and config["name"] not in args.only:
            continue
        for seed in args.seeds:
            key = f"{config['name']}/seed-{seed}"
            settings = merged_train(params, config).model_dump(mode="json", exclude={"evaluation"})
            done = results.get(key, {})
            if _bearing(done.get("settings", {})) == _bearing(settings) and done.get("config") == config \
                    and done.get("context") == context:
                continue  # done with exactly these settings, base model, pairs and prompts
            result = run(config, seed, chain, params, sweep.get("prompts", 96), sweep.get("every", 50))
            results[key] = {"config": config, "settings": settings, "seed": seed, "context": context} | result
            results_path.write_text(json.dumps(results, indent=1))
            first, last = result["curve"][0]["validation_reward"], result["curve"][-1]["validation_reward"]
            print(f"{key}: validation reward {last:.4f} ({result['seconds']:.0f} s, implicit accuracy "
                  f"{result['implicit_accuracy']:.2f}; first point {first:.4f})", flush=True)
    summary_path = out / f"{sweep['name']}_summary.json"
    earlier = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if earlier.get("context") == context:  # the base model's reward on these prompts, measured before
        base_reward = earlier["base_reward"]
    if base_reward is None:
        from smpo_pipeline.evaluation import oracle_rewards
        from smpo_pipeline.models.sampling import SamplingProtocol

        base = chain["base_model"]
        e = params["train"]["evaluation"]
        val = chain["prompts_validation"][: sweep.get("prompts", 96)]
        protocol = SamplingProtocol(e["steps"], e["guidance_scale"], base.unet.config.sample_size * base.vae_scale_factor)
        base_reward = float(oracle_rewards(base, val, list(range(len(val))), protocol, 64, progress=False).mean())
    print(f"\nbase model: validation reward {base_reward:.4f} on {sweep.get('prompts', 96)} prompts\n")
    print(f"{'configuration':<28} {'seeds':>5} {'gain':>8} {'± s.e.':>7} {'impl. acc.':>10} {'s/run':>6}")
    summary = {}
    for config in sweep["configs"]:
        runs = [v for k, v in results.items() if k.split("/")[0] == config["name"] and v.get("context") == context]
        if not runs:
            continue
        gains = np.array([r["curve"][-1]["validation_reward"] - base_reward for r in runs])
        se = gains.std(ddof=1) / np.sqrt(len(gains)) if len(gains) > 1 else float("nan")
        summary[config["name"]] = {"gain": float(gains.mean()), "standard_error": float(se), "seeds": len(gains)}
        print(f"{config['name']:<28} {len(gains):>5} {gains.mean():>+8.4f} {se:>7.4f} "
              f"{np.mean([r['implicit_accuracy'] for r in runs]):>10.2f} {np.mean([r['seconds'] for r in runs]):>6.0f}")
    summary_path.write_text(json.dumps({"base_reward": base_reward, "context": context} | summary, indent=1))
    _plot(sweep, results, base_reward, context, out / f"{sweep['name']}.png")


def _plot(sweep: dict, results: dict, base_reward: float, context: str, path: Path) -> None:
    import itertools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    # 20 distinct colours (the default cycle repeats after 10), and the objective as the line style
    colours = itertools.cycle(plt.get_cmap("tab20").colors)
    styles = {"dpo": "-", "smpo": "--", "dro": ":", "sft": "-."}
    for config in sweep["configs"]:
        runs = [v["curve"] for k, v in results.items() if k.split("/")[0] == config["name"] and v.get("context") == context]
        if not runs:
            continue
        n = min(len(c) for c in runs)
        # Every run starts from the base model: gain 0 at step 0.
        reward = np.array([[0.0] + [p["validation_reward"] - base_reward for p in c[:n]] for c in runs])
        colour, style = next(colours), styles.get(config.get("objective"), "-")
        for ax, key in zip(axes, ("step", "cpu_seconds"), strict=True):
            x = np.mean([[0.0] + [p[key] for p in c[:n]] for c in runs], axis=0)
            ax.plot(x, reward.mean(0), marker="o", ms=3, color=colour, linestyle=style,
                    label=f"{config['name']} ({len(runs)})")
            ax.fill_between(x, reward.min(0), reward.max(0), color=colour, alpha=0.15)
    axes[0].set(xlabel="optimiser step", ylabel="validation reward − base", title=sweep["name"])
    axes[1].set(xlabel="CPU seconds of training")
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
