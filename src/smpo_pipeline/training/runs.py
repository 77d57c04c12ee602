"""One training run, from the validated parameters: its ``TrainConfig``, what it reads, and
whether its checkpoints already hold it. Shared by the ``train`` and ``tune`` pipelines and the
benchmarks, so every caller builds a run the same way."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from smpo_pipeline.params import CacheParams, TrainParams


def check_cache(cache_report: dict, prints, inversion, trajectories: bool = True) -> None:
    """The cache must have been built from this base model by this code, and, where the run reads
    cached trajectories, with them and these inversion settings."""
    wanted = {"reference_unet": prints.unet, "vae": prints.vae, "text_encoders": prints.text, "code": prints.code,
              "dtype": f"torch.{prints.storage_dtype}"}
    if trajectories:
        wanted |= {"inversion": asdict(inversion), "trajectories": True}
    if not any(all(b.get(k, True if k == "trajectories" else None) == v for k, v in wanted.items())
               for b in cache_report.get("built_with", [])):
        raise ValueError(f"the training cache was built with {cache_report.get('built_with')}, not with the current "
                         f"base model and code{' and cache.inversion' if trajectories else ''} {wanted}: rebuild it with "
                         "`kedro run --pipeline cache`" + (" (cache.trajectories: true)" if trajectories else ""))


def train_config(objective: str, train: TrainParams, noise: str, seed: int | None = None):
    """The trainer's config for one (objective, seed), built from the parameters by name."""
    from smpo_pipeline.training.config import DROConfig, TrainConfig
    from smpo_pipeline.training.replay import SamplerConfig

    ds = None
    if train.deepspeed_config:
        ds = json.loads(Path(train.deepspeed_config).read_text())
        ds["zero_optimization"] = ds.get("zero_optimization", {}) | {"stage": train.zero_stage}
    d = train.dro
    return TrainConfig(
        objective=objective, beta=train.beta.get(objective, 0.0), gamma=train.gamma, forward_noise=noise,
        steps=train.steps, batch_size=train.batch_size, learning_rate=train.lr_for(objective),
        warmup_steps=train.warmup_steps, grad_clip=train.grad_clip, caption_dropout=train.caption_dropout,
        seed=train.seeds[0] if seed is None else seed, deepspeed=ds, evaluate_every=train.evaluation.every,
        gradient_accumulation=train.gradient_accumulation, optimizer=train.optimizer, weight_decay=train.weight_decay,
        lr_schedule=train.lr_schedule, gradient_checkpointing=train.gradient_checkpointing, precision=train.precision,
        lora_rank=train.lora.rank, lora_alpha=train.lora.alpha, timestep_range=tuple(train.timestep_range),
        min_snr_gamma=train.min_snr_gamma, latents=train.latents,
        loss_guidance=train.loss_guidance, timestep_sampling=train.timestep_sampling,
        dro=DROConfig(margin=d.margin, refresh_every=d.refresh_every, buffer_size=d.buffer_size,
                      states_per_step=d.states_per_step,
                      sampler=SamplerConfig(steps=d.sampler_steps, guidance_scale=d.sampler_guidance, jitter=d.jitter)),
    )


def run_inputs(objective: str, preference_pairs, base_model, cache_report: dict, train: TrainParams,
                cache: CacheParams) -> dict:
    """What one run of ``objective`` reads: its pairs (in its winner order, SmPO's p), the cached
    tensors behind them (DRO: its expert images), the inversion settings and the forward noise."""
    from smpo_pipeline.inversion import InversionConfig
    from smpo_pipeline.smoothing import training_pairs
    from smpo_pipeline.training.cache import CacheReader, Fingerprints
    from smpo_pipeline.training.data import CachedExperts, CachedPairs, expert_pool

    inversion = InversionConfig.of(cache.inversion)
    noise = train.forward_noise if objective == "smpo" else "none"
    pairs = training_pairs(preference_pairs, train.order_for(objective), train.smoothing_by, train.gamma)
    prints = Fingerprints.of(base_model, inversion, cache.storage_dtype)
    check_cache(cache_report, prints, inversion, trajectories=noise == "cached")
    reader = CacheReader(Path(cache.root))
    experts = None
    if objective == "dro":
        experts = CachedExperts(expert_pool(pairs, train.dro.experts, train.dro.top_k), reader, prints)
    return {"pairs": pairs, "data": CachedPairs(pairs, reader, prints, noise == "cached"), "experts": experts,
            "inversion": inversion, "noise": noise, "prints": prints}


def reuse(checkpoint_dir: str, steps: int, description: dict) -> tuple[int, str, list[str]]:
    """(steps already done, what happens to the run: new | resumed at step k | finished, and for a
    new run what changed since the latest other run of the same objective). A new run's
    description is written beside its checkpoints (``run.json``)."""
    from smpo_pipeline.keys import changed
    from smpo_pipeline.training.checkpoints import latest

    found = latest(checkpoint_dir)
    done = int(found.name.split("-")[1]) if found else 0
    if found:
        return done, "finished" if done >= steps else f"resumed at step {done}", []
    here = Path(checkpoint_dir)
    new = json.loads(json.dumps(description, default=str))
    earlier = [(json.loads(path.read_text()), path.stat().st_mtime)
               for path in here.parent.glob("*/run.json") if path.parent != here]
    # Against the latest earlier run with the same seed, else the latest of any seed.
    earlier.sort(key=lambda run: (run[0]["settings"].get("seed") == new["settings"].get("seed"), run[1]))
    differences = changed(earlier[-1][0], new) if earlier else []
    here.mkdir(parents=True, exist_ok=True)
    (here / "run.json").write_text(json.dumps(description, indent=1, sort_keys=True, default=str))
    return 0, "new", differences


class RunHistory:
    """A run's per-step records and its base model's validation point, kept beside its checkpoints
    (``records.jsonl``, ``start.json``), so a resumed or finished run reports its whole curve. The
    records of steps after the latest checkpoint died with the process that ran them: they are
    dropped, and the resumed run logs them again."""

    def __init__(self, checkpoint_dir: str, done: int) -> None:
        root = Path(checkpoint_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.path, self.start_path = root / "records.jsonl", root / "start.json"
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        self.earlier = [json.loads(line) for line in lines][:done]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.earlier))
        self.start = json.loads(self.start_path.read_text()) if self.start_path.is_file() else None

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_start(self, start: dict | None) -> None:
        if start is not None:
            self.start = start
            self.start_path.write_text(json.dumps(start))
