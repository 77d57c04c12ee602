"""Parameter schemas (pydantic), validated when the Kedro context is created.

Each top-level section of ``conf/<env>/parameters*.yml`` has a model here; unknown keys are
errors, so a typo cannot silently fall back to a default. ``validate_parameters`` raises a
``ValueError`` whose message names every wrong key as a dotted path (``base_model.unet.steps``).
"""

from __future__ import annotations

from typing import Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

NonNegativeInt = Field(ge=0)


def _split_words(value: Any) -> Any:
    """A list given on the command line: ``kedro run --params`` splits its argument on every comma,
    so a list there is written with spaces (``train.seeds=[0 1 2]``), which OmegaConf reads as one
    string (``["0 1 2"]``). Split such strings into the list's items; anything else is left as is."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [word for item in value for word in (item.split() if isinstance(item, str) else [item])]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_from_the_command_line(cls, data: Any) -> Any:
        """Every list- or tuple-valued field reads the space form of ``kedro run --params``."""
        if not isinstance(data, dict):
            return data
        lists = {name for name, f in cls.model_fields.items() if get_origin(f.annotation) in (list, tuple)}
        return {k: _split_words(v) if k in lists else v for k, v in data.items()}


class RuntimeParams(_Section):
    num_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = one per core")
    hf_hub_offline: bool = True


class WorldParams(_Section):
    seed: int = 0
    resolution: PositiveInt = 32
    validation_share: float = Field(0.1, gt=0, lt=1)
    test_share: float = Field(0.1, gt=0, lt=1)
    max_train_prompts: int | None = Field(None, ge=2, description="cap for reduced-size runs")

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> WorldParams:
        if self.validation_share + self.test_share >= 1:
            raise ValueError("validation_share + test_share must be below 1")
        return self


class ModelSizeParams(_Section):
    vae_channels: tuple[PositiveInt, ...] = (32, 64)
    unet_channels: tuple[PositiveInt, ...] = (32, 64, 64)
    attention_heads: PositiveInt = 4
    text_hidden_size: PositiveInt = 32
    text_layers: PositiveInt = 2
    max_length: PositiveInt = 16
    tokenizer_vocab_size: PositiveInt = 600


class VAETrainingParams(_Section):
    steps: PositiveInt = 200
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1e-3
    kl_weight: float = Field(1e-6, ge=0)
    cosine_decay: bool = False  # anneal the LR to 0: a sharper round trip for the same steps
    held_out_renders: PositiveInt = 256  # fresh renders the reported PSNR and the scaling factor are measured on


class NoiseScheduleParams(_Section):
    """The base model's noise schedule (``models.tiny_sdxl.make_noise_schedule``): SDXL's
    (ε-prediction, "leading" sampling), or SDXL's betas rescaled to zero terminal SNR with
    v-prediction and "trailing" sampling (Lin et al. 2024). It is saved in the model's scheduler
    config, and everything downstream reads it from there."""

    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    zero_terminal_snr: bool = False

    @model_validator(mode="after")
    def _v_at_zero_snr(self) -> NoiseScheduleParams:
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("zero_terminal_snr: true needs prediction_type: v_prediction (ε is undefined at SNR 0)")
        return self


class UNetTrainingParams(_Section):
    steps: PositiveInt = 700
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1e-3
    warmup_steps: int = Field(200, ge=0)
    grad_clip: PositiveFloat = 1.0
    ema_decay: float = Field(0.995, ge=0, lt=1)
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    offset_noise: float = Field(0.1, ge=0)
    renders_per_prompt: PositiveInt = 8
    min_snr_gamma: PositiveFloat | None = 5.0
    cosine_decay: bool = False  # anneal the LR to 0 after warm-up (the raw weights settle where the EMA is)
    curve_every: int = Field(0, ge=0, description="measure the EMA on validation prompts every N steps; 0: never")


class CaptionNoiseParams(_Section):
    """Web-like caption mistakes of the base model's pretraining corpus (``world.captions``): the
    probability of each kind, drawn independently per training image."""

    seed: int = 0
    swap_colors: float = Field(0.0, ge=0, le=1)
    position: float = Field(0.0, ge=0, le=1)
    color: float = Field(0.0, ge=0, le=1)
    shape: float = Field(0.0, ge=0, le=1)
    size: float = Field(0.0, ge=0, le=1)

    def rates(self) -> dict[str, float]:
        return self.model_dump(exclude={"seed"})


class SamplingParams(_Section):
    steps: PositiveInt = 20
    guidance_scale: PositiveFloat = 3.0
    batch_size: PositiveInt = 64


class BaseModelParams(_Section):
    seed: int = 0
    size: ModelSizeParams = ModelSizeParams()
    noise_schedule: NoiseScheduleParams = NoiseScheduleParams()
    vae: VAETrainingParams = VAETrainingParams()
    unet: UNetTrainingParams = UNetTrainingParams()
    captions: CaptionNoiseParams = CaptionNoiseParams()
    evaluation: SamplingParams = SamplingParams()
    evaluation_seeds_per_prompt: PositiveInt = 2


class SecondGeneratorParams(_Section):
    """A second model that draws part of each prompt's candidates, as Pick-a-Pic's pairs come from
    several generators: the base trained further on the same renders with their true captions (a
    recaptioned corpus), the way a newer model of one family is made."""

    candidates_per_prompt: int = Field(0, ge=0)  # of pairs.candidates_per_prompt; 0: the base draws all
    training: UNetTrainingParams = UNetTrainingParams(
        steps=1000, batch_size=32, learning_rate=1e-4, warmup_steps=0, cosine_decay=True)


class PairsParams(_Section):
    seed: int = 0
    candidates_per_prompt: int = Field(2, ge=2)  # images generated per training prompt
    pairs_per_prompt: PositiveInt = 1  # labelled pairs among them (at most K(K-1)/2)
    guidance_scales: tuple[PositiveFloat, ...] = Field((2.0, 4.0, 7.0), min_length=1)
    steps: PositiveInt = 15
    batch_size: PositiveInt = 64
    rows_per_shard: PositiveInt = 256
    jpeg_quality: int = Field(95, ge=1, le=100)
    second_generator: SecondGeneratorParams = SecondGeneratorParams()

    @model_validator(mode="after")
    def _enough_candidates(self) -> PairsParams:
        k = self.candidates_per_prompt
        if self.pairs_per_prompt > k * (k - 1) // 2:
            raise ValueError(f"pairs_per_prompt ({self.pairs_per_prompt}) exceeds the {k * (k - 1) // 2} distinct "
                             f"pairs of candidates_per_prompt={k} images")
        if self.second_generator.candidates_per_prompt > k:
            raise ValueError(f"second_generator.candidates_per_prompt ({self.second_generator.candidates_per_prompt}) "
                             f"exceeds candidates_per_prompt={k}")
        return self


class AnnotatorParams(_Section):
    seed: int = 0
    population_size: PositiveInt = 40
    weight_concentration: PositiveFloat = 8.0
    taste_scale: float = Field(0.15, ge=0)
    rationality_median: PositiveFloat = 12.0
    max_tie_margin: float = Field(0.04, ge=0)
    zipf_exponent: float = Field(1.1, ge=0)


class RawDataParams(_Section):
    """Where the bootstrap writes the raw inputs the repository ships (and their manifest)."""

    root: str = "data/01_raw"


class DataParams(_Section):
    """Ingestion of Pick-a-Pic v2 shards (``pipelines/data``)."""

    raw_dir: str = "data/01_raw/pickapic"
    work_dir: str = "data/02_intermediate/pickapic_shards"
    expectations: str = "conf/base/expectations/pickapic_v2.json"
    drop_ties: bool = True
    max_image_side: PositiveInt = 4096
    min_image_side: PositiveInt = 8
    validation_share: float = Field(0.1, ge=0, lt=1)
    min_valid_share: float = Field(0.5, ge=0, le=1)


class BoundsParams(_Section):
    """Normalisation bounds of the reward: fixed (e.g. PickScore's published ones) or quantiles of
    the dataset's own scores."""

    method: Literal["fixed", "quantile"] = "fixed"
    low: float = 0.0
    high: float = 1.0
    lower_quantile: float = Field(0.01, ge=0, lt=1)
    upper_quantile: float = Field(0.99, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> BoundsParams:
        if self.method == "fixed" and not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        if self.method == "quantile" and not self.upper_quantile > self.lower_quantile:
            raise ValueError("upper_quantile must be greater than lower_quantile")
        return self


class ReferenceRewardParams(_Section):
    """A second reward model scored beside the smoothing one and reported against it (the embedded
    world's shapes-oracle: the ground truth a learned reward model is measured by)."""

    model: Literal["shapes-oracle", "pickscore", "clip", "aesthetic"] = "shapes-oracle"
    model_options: dict[str, str] = Field(default_factory=dict)
    bounds: BoundsParams = BoundsParams()


class RewardsParams(_Section):
    """Reward scoring and SmPO smoothing (``pipelines/rewards``)."""

    model: Literal["shapes-oracle", "pickscore", "clip", "aesthetic"] = "shapes-oracle"
    model_options: dict[str, str] = Field(default_factory=dict)
    batch_size: PositiveInt = 64
    cache_dir: str = "data/03_primary/reward_scores"
    bounds: BoundsParams = BoundsParams()
    tau: PositiveFloat = 1.0
    gamma: PositiveFloat = 10.0
    reference: ReferenceRewardParams | None = None


class ScorerSizeParams(_Section):
    """A CLIP built from config (the embedded world): ViT image tower and causal text tower."""

    image_size: PositiveInt = 32
    patch_size: PositiveInt = 4
    hidden_size: PositiveInt = 64
    layers: PositiveInt = 2
    heads: PositiveInt = 4
    projection_dim: PositiveInt = 64
    max_length: PositiveInt = 16


class ScorerTrainingParams(_Section):
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 2e-3
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(50, ge=0)
    seed: int = 0


class RewardModelParams(_Section):
    """A PickScore-style reward model trained on the preference pairs (``pipelines/reward_model``)."""

    train: bool = True  # false: the pipeline records that it trained nothing (SmPO's published PickScore)
    init: str | None = None  # a CLIP checkpoint (directory or hub id) to fine-tune; None: built from `size`
    tokenizer: str = "data/01_raw/base_model/tokenizer"  # the tokenizer of a model built from config
    size: ScorerSizeParams = ScorerSizeParams()
    training: ScorerTrainingParams = ScorerTrainingParams()
    checkpoint_root: str = "data/06_models/reward_model_checkpoints"  # <run id>/step-N; a re-run resumes there
    checkpoint_every: PositiveInt = 100
    reference_model: str | None = "shapes-oracle"  # ground truth it is measured against (None: the labels only)
    bootstrap_samples: PositiveInt = 2000


class InversionParams(_Section):
    num_steps: PositiveInt = 10          # K: DDIM inverse grid size (SDXL 10, SD1.5 5)
    renoise_iterations: int = Field(1, ge=0)  # R: 1 = SmPO
    guidance_scale: float = Field(1.0, ge=1.0)  # 1 = prompt only


class CacheParams(_Section):
    """The latent / text-embedding / ReNoise-trajectory cache (``pipelines/cache``)."""

    root: str = "data/05_model_input/training_cache"
    batch_size: PositiveInt = 64
    storage_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_processes: PositiveInt = 1
    trajectories: bool = True  # ReNoise trajectories (SmPO with train.forward_noise: cached); false: latents and text only
    inversion: InversionParams = InversionParams()


class TrainEvaluationParams(SamplingParams):
    seeds_per_prompt: PositiveInt = 2
    max_prompts: PositiveInt | None = None  # the first N validation prompts (reduced-size runs)
    every: int = Field(0, ge=0, description="learning curve: validation reward every N steps (0: none)")
    curve_prompts: PositiveInt = 48  # the first N validation prompts, one image each, for the curve


Objective = Literal["dpo", "smpo", "dro"]
PAIR_ORDER = {"dpo": "label", "smpo": "reward", "dro": "reward"}  # train.pair_order for objectives it leaves out


class DROParams(_Section):
    """Diffusion-DRO (``docs/objectives.md``): expert images and online policy samples."""

    margin: PositiveFloat = 0.001  # official
    experts: Literal["winners", "top_k"] = "winners"  # the preferred image of each pair, or top-K by reward
    top_k: PositiveInt | None = None  # with experts: top_k (None: every image, ranked)
    refresh_every: PositiveInt = 1  # M: optimiser steps between refreshes of the sampling network (official 1)
    buffer_size: PositiveInt = 64  # policy states kept in the replay buffer
    # New policy states sampled into the buffer before each step (None: batch_size, one per row a
    # step trains on). Fewer cost less sampling; each state then serves more steps before it leaves.
    states_per_step: PositiveInt | None = None
    sampler_steps: PositiveInt = 20  # DPM-Solver++ (official 20)
    sampler_guidance: float = Field(1.0, ge=1.0)  # official 1.0
    jitter: bool = True  # per-sample shifted timestep grids

    @model_validator(mode="after")
    def _states_fit_the_buffer(self) -> DROParams:
        if self.states_per_step is not None and self.states_per_step > self.buffer_size:
            raise ValueError(f"states_per_step ({self.states_per_step}) exceeds buffer_size ({self.buffer_size}): "
                             "states sampled before a step would leave the buffer before it could draw them")
        return self


class LoRAParams(_Section):
    rank: int = Field(0, ge=0, description="0: full fine-tune")
    alpha: PositiveFloat | None = None  # None: = rank


def engine_problem(precision: str, deepspeed: bool, processes: int) -> str | None:
    """Why a training engine cannot run with these settings, or None. Shared by the parameters'
    validation and the trainer's own config (``training.config.TrainConfig``)."""
    if precision == "fp16" and not deepspeed:
        return "precision fp16 needs DeepSpeed's loss scaling: set deepspeed_config, or use bf16"
    if processes > 1 and not deepspeed:
        return "num_processes > 1 needs deepspeed_config (DeepSpeed averages the gradients)"
    return None


class TrainParams(_Section):
    """Preference training (``pipelines/train``): one model per objective."""

    objectives: tuple[Objective, ...] = ("dpo", "smpo", "dro")
    # Whose winner each objective learns: the annotators' (Diffusion-DPO's official data) or the
    # reward model's (SmPO's; DRO's experts are chosen by a reward too). smoothing.orient_pairs.
    pair_order: dict[Objective, Literal["reward", "label"]] = Field(default_factory=lambda: dict(PAIR_ORDER))
    # Where SmPO's p (and the reward order) comes from: the smoothing reward model (rewards.model) or
    # the reference scored beside it (rewards.reference; the embedded world's shapes-oracle).
    smoothing_by: Literal["reward_model", "reference"] = "reward_model"
    forward_noise: Literal["cached", "online", "none"] = "cached"  # SmPO's forward noise (DPO: none)
    beta: dict[Literal["dpo", "smpo"], PositiveFloat] = Field(default_factory=lambda: {"dpo": 5000.0, "smpo": 5000.0})
    gamma: PositiveFloat = 10.0
    steps: PositiveInt = 200
    batch_size: PositiveInt = 16  # pairs (DRO: expert/policy rows) per micro-batch and process
    gradient_accumulation: PositiveInt = 1
    learning_rate: PositiveFloat | dict[Objective, PositiveFloat] = 1e-5  # one for all, or per objective
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after the warmup
    warmup_steps: int = Field(20, ge=0)
    grad_clip: PositiveFloat = 1.0
    caption_dropout: float = Field(0.2, ge=0, lt=1)
    gradient_checkpointing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16: under DeepSpeed only (loss scaling)
    lora: LoRAParams = LoRAParams()
    dro: DROParams = DROParams()
    seeds: tuple[int, ...] = Field((0,), min_length=1)  # one run per seed: replicates for the evaluation's intervals
    timestep_range: tuple[int, int] = (0, 1000)  # pairs' timesteps drawn uniformly from [low, high)
    # uniform: independent draws (official) | stratified: one per equal stratum of the range in each micro-batch
    timestep_sampling: Literal["uniform", "stratified"] = "uniform"
    # VAE latents: a fresh posterior sample every step (the official latent_dist.sample()) or the
    # posterior mean (an ablation: the tiny base loses reward when fine-tuned on it, docs/regime.md)
    latents: Literal["sample", "mean"] = "sample"
    min_snr_gamma: PositiveFloat | None = None  # weight each sample's MSE by min(SNR, γ)/SNR; None: plain MSE
    # DPO/SmPO/SFT losses on the classifier-free-guided prediction ε_u + w(ε_c − ε_u) at this w (1: the
    # conditional prediction alone, as the official code); the pairs were drawn by the guided sampler
    loss_guidance: float = Field(1.0, ge=1)
    deepspeed_config: str | None = "conf/base/deepspeed/zero2_cpu.json"
    zero_stage: Literal[0, 1, 2, 3] = 2
    num_processes: PositiveInt = 1  # > 1: launched as a subprocess, one rank each (the total world size)
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"  # deepspeed: DeepSpeed's launcher (multi-node)
    hostfile: str | None = None  # with launcher deepspeed: `host slots=N` lines; its slots add up to num_processes
    launch_dir: str | None = None  # where the launch spec and rank outputs go (shared storage for several
    #                                nodes); None: a temporary directory on this machine
    checkpoint_root: str = "data/06_models/checkpoints"
    checkpoint_every: PositiveInt = 50
    keep_last: PositiveInt = 2
    evaluation: TrainEvaluationParams = TrainEvaluationParams()

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if isinstance(self.learning_rate, dict) and (missing := set(self.objectives) - set(self.learning_rate)):
            raise ValueError(f"learning_rate has no value for {sorted(missing)}")
        if missing := {"dpo", "smpo"} & set(self.objectives) - set(self.beta):
            raise ValueError(f"beta has no value for {sorted(missing)}")
        if problem := engine_problem(self.precision, self.deepspeed_config is not None, self.num_processes):
            raise ValueError(problem)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (got {list(self.seeds)})")
        low, high = self.timestep_range
        if not 0 <= low < high <= 1000:
            raise ValueError(f"timestep_range must satisfy 0 <= low < high <= 1000 (got {list(self.timestep_range)})")
        if self.hostfile and self.launcher != "deepspeed":
            raise ValueError("hostfile is read by DeepSpeed's launcher: set launcher: deepspeed")
        return self

    def order_for(self, objective: str) -> str:
        return self.pair_order.get(objective, PAIR_ORDER[objective])

    def lr_for(self, objective: str) -> float:
        return self.learning_rate[objective] if isinstance(self.learning_rate, dict) else self.learning_rate


class ProtocolParams(_Section):
    scheduler: Literal["euler", "euler_a", "dpm++", "ddim"] | None = None  # None: the model's own
    steps: PositiveInt = 20
    guidance_scale: PositiveFloat = 3.0
    resolution: PositiveInt | None = None  # None: the model's native size


class RewardModelSpec(_Section):
    name: Literal["shapes-oracle", "pickscore", "clip", "aesthetic"]
    options: dict[str, str] = Field(default_factory=dict)


class GridParams(_Section):
    prompts: PositiveInt = 8  # rows, spread evenly over the prompt set
    seed_index: int = Field(0, ge=0)  # which of each prompt's seeds
    cell: PositiveInt = 96  # pixels per image


class EvaluationParams(_Section):
    """Evaluation (``pipelines/evaluate``): the same prompts and seeds for every model."""

    models: tuple[Literal["base", "dpo", "smpo", "dro"], ...] = ("base", "dpo", "smpo", "dro")
    reference: Literal["base", "dpo", "smpo", "dro"] = "base"
    prompt_set: str = "test"  # a label for the report; the file is the catalog's evaluation_prompts
    max_prompts: PositiveInt | None = None  # the first N prompts (reduced-size runs)
    seeds_per_prompt: PositiveInt = 2
    seed: int = 0  # image i of a prompt uses seed + i, for every model
    protocol: ProtocolParams = ProtocolParams()
    batch_size: PositiveInt = 64
    image_root: str = "data/07_model_output/evaluation_images"
    reward_models: tuple[RewardModelSpec, ...] = Field((RewardModelSpec(name="shapes-oracle"),), min_length=1)
    bootstrap_samples: PositiveInt = 2000
    confidence: float = Field(0.95, gt=0, lt=1)
    grid: GridParams = GridParams()

    @model_validator(mode="after")
    def _reference_is_evaluated(self) -> EvaluationParams:
        if self.reference not in self.models:
            raise ValueError(f"reference {self.reference!r} is not among models {list(self.models)}")
        return self


class SearchRange(_Section):
    low: PositiveFloat
    high: PositiveFloat
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        return self


class TuneParams(_Section):
    """The Optuna study over SmPO's β and τ (``pipelines/tune``)."""

    study_name: str = "smpo"
    storage: str = "sqlite:///data/09_tuning/optuna.db"  # or a journal file path (parallel workers)
    trial_root: str = "data/09_tuning/trials"  # per-trial checkpoints (segments resume from them)
    n_trials: PositiveInt = 12
    steps: PositiveInt = 120  # training steps per trial
    report_every: PositiveInt = 40  # validation reward reported (and pruning checked) every N steps
    beta: SearchRange = SearchRange(low=1000.0, high=30000.0)
    tau: SearchRange = SearchRange(low=0.05, high=2.0)
    gamma: SearchRange | None = None  # None: train.gamma fixed
    validation_prompts: PositiveInt = 48
    seeds_per_prompt: PositiveInt = 1
    seed: int = 0
    startup_trials: int = Field(3, ge=0)  # random trials before TPE, and before the pruner acts
    heartbeat_seconds: PositiveInt = 10

    @model_validator(mode="after")
    def _segments(self) -> TuneParams:
        if self.steps % self.report_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of report_every ({self.report_every})")
        return self


class DisagreementAxisParams(_Section):
    """Each annotator setting at d = 0 (nearly unanimous) and d = 1 (nearly random):
    ``world.disagreement.DisagreementAxis``."""

    rationality: tuple[PositiveFloat, PositiveFloat] = (200.0, 0.5)
    weight_concentration: tuple[PositiveFloat, PositiveFloat] = (200.0, 1.0)
    taste_scale: tuple[float, float] = (0.0, 0.3)
    max_tie_margin: float = Field(0.04, ge=0)
    population_size: PositiveInt = 40
    zipf_exponent: float = Field(1.1, ge=0)


class StudyEvaluationParams(_Section):
    """How each cell of the study is measured: the test prompts (the evaluation's protocol and
    seeds, ``evaluation``) and the held-out pairs' implicit accuracy against the oracle's order."""

    max_prompts: PositiveInt | None = None  # the first N test prompts (None: all)
    seeds_per_prompt: PositiveInt = 1
    heldout_pairs: PositiveInt | None = None  # the first N validation pairs (None: all)
    heldout_draws: PositiveInt = 4  # (noise, timestep) draws per held-out pair, the same for every model
    bootstrap_samples: PositiveInt = 2000


class StudyParams(_Section):
    """The disagreement study (``pipelines/study``): the same pairs labelled again at each level,
    then a reward model learned from each level's labels and a grid of training cells
    (level × arm × seed), each trained with the ``train`` section as ``train`` here overrides it."""

    levels: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    population_seed: int = 7
    labelling_seed: int = 0
    axis: DisagreementAxisParams = DisagreementAxisParams()
    arms: list[Literal["dpo", "smpo-learned", "smpo-oracle"]] = Field(["dpo", "smpo-learned", "smpo-oracle"],
                                                                     min_length=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)  # overrides of the train section (validated by it)
    reward_model: ScorerTrainingParams = ScorerTrainingParams()  # each level's reward model (reward_model.size)
    evaluation: StudyEvaluationParams = StudyEvaluationParams()
    root: str = "data/07_model_output/study"  # each cell's record, under its key: a re-run trains only what is missing
    checkpoint_root: str = "data/06_models/study_checkpoints"  # cells and reward models while they train

    @field_validator("arms", "seeds")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"must not repeat a value (got {values})")
        return values

    def train_params(self, train: TrainParams) -> TrainParams:
        """The ``train`` section with this study's overrides (``study.train``), validated as one."""
        return TrainParams.model_validate(_deep_merge(train.model_dump(), self.train))

    @field_validator("levels")
    @classmethod
    def _levels_on_the_axis(cls, levels: list[float]) -> list[float]:
        if any(not 0.0 <= d <= 1.0 for d in levels) or sorted(set(levels)) != list(levels):
            raise ValueError("study levels must be distinct, increasing and in [0, 1]")
        return levels


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for name, value in extra.items():
        out[name] = _deep_merge(out[name], value) if isinstance(value, dict) and isinstance(out.get(name), dict) else value
    return out


class ProjectParams(_Section):
    runtime: RuntimeParams = RuntimeParams()
    world: WorldParams = WorldParams()
    base_model: BaseModelParams = BaseModelParams()
    pairs: PairsParams = PairsParams()
    annotators: AnnotatorParams = AnnotatorParams()
    raw_data: RawDataParams = RawDataParams()
    data: DataParams = DataParams()
    reward_model: RewardModelParams = RewardModelParams()
    rewards: RewardsParams = RewardsParams()
    cache: CacheParams = CacheParams()
    train: TrainParams = TrainParams()
    evaluation: EvaluationParams = EvaluationParams()
    tune: TuneParams = TuneParams()
    study: StudyParams = StudyParams()

    @model_validator(mode="after")
    def _study_trains_validly(self) -> ProjectParams:
        try:
            self.study.train_params(self.train)
        except ValidationError as error:
            wrong = "; ".join(f"study.train.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(f"study.train does not override the train section validly: {wrong}") from None
        return self


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<parameters>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown parameter (not in the schema of smpo_pipeline.params)"
    if not error["loc"]:  # a check across sections names its keys itself; its input is every parameter
        return error["msg"].removeprefix("Value error, ")
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def validate_parameters(params: dict[str, Any]) -> ProjectParams:
    """All parameters, validated; ``ValueError`` naming each wrong key otherwise."""
    try:
        return ProjectParams.model_validate(params)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ValueError(f"Invalid parameters in conf/ ({exc.error_count()}):\n  {lines}") from None
