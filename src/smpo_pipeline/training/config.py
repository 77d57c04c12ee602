"""The training run's settings: one frozen dataclass per concern, built by name only.

``TrainConfig`` is what the loop (``training.trainer.train_preference``) reads; ``DROConfig`` holds
Diffusion-DRO's online half and ``SamplerConfig`` (``training.replay``) the policy's sampler. The
pipeline builds them from the validated pydantic parameters (``pipelines/train/nodes.py``), the
``torchrun`` launch from the JSON spec it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smpo_pipeline.training.replay import SamplerConfig


@dataclass(frozen=True, kw_only=True)  # built by name only: reordering fields must not swap values
class DROConfig:
    margin: float = 0.001  # official
    refresh_every: int = 1  # M: the sampling network is the policy of M steps ago at most (official 1)
    buffer_size: int = 64  # policy states kept
    states_per_step: int | None = None  # new states sampled before each step (None: batch_size)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):  # from a JSON spec (the torchrun launch)
            object.__setattr__(self, "sampler", SamplerConfig(**self.sampler))


@dataclass(frozen=True, kw_only=True)  # built by name only: β and γ are both floats, in any order
class TrainConfig:
    objective: str  # dpo | smpo | dro
    beta: float
    gamma: float
    forward_noise: str  # cached | online | none: SmPO's ReNoise trajectories, or random noise (docs/objectives.md)
    steps: int  # optimiser steps
    batch_size: int  # pairs (DRO: expert/policy rows) per micro-batch
    learning_rate: float
    warmup_steps: int
    grad_clip: float
    caption_dropout: float
    seed: int
    deepspeed: dict | None = None  # a DeepSpeed config (ZeRO stage, offload, ...); None: plain torch
    checkpoint_dir: str | None = None  # resume from its latest checkpoint, save every checkpoint_every
    checkpoint_every: int = 50
    keep_last: int = 2
    gradient_accumulation: int = 1
    optimizer: str = "adamw"  # adamw | adafactor
    weight_decay: float = 0.01
    lr_schedule: str = "constant"  # after warmup: constant (official) | cosine
    gradient_checkpointing: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16
    lora_rank: int = 0  # 0: full fine-tune
    lora_alpha: float | None = None  # None: = rank
    timestep_range: tuple[int, int] = (0, 1000)  # pairs' t drawn uniformly from [low, high)
    timestep_sampling: str = "uniform"  # uniform (official) | stratified: one t per equal stratum of a micro-batch
    latents: str = "sample"  # sample: a fresh VAE posterior sample per step (official) | mean
    min_snr_gamma: float | None = None  # per-sample MSE weighted by min(SNR, γ)/SNR; None: plain MSE (official)
    loss_guidance: float = 1.0  # pair losses on the guided prediction ε_u + w(ε_c − ε_u); 1: conditional only
    evaluate_every: int = 0  # call the evaluate hook every N steps and at the end (0: never)
    dro: DROConfig = field(default_factory=DROConfig)

    def __post_init__(self) -> None:
        if isinstance(self.dro, dict):
            object.__setattr__(self, "dro", DROConfig(**self.dro))
