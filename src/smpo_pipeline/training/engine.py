"""What steps the policy: plain PyTorch or DeepSpeed ZeRO, behind one small interface.

The training loop (``training.trainer``) only calls ``backward(loss)`` once per micro-batch and
``step()`` once per optimiser step, reads ``lr``, and asks for the policy's ``full_state()``. Which
engine does it, and how it clips, accumulates and casts, is decided here once, from ``TrainConfig``.

DeepSpeed trains one process in-process too: the distributed environment it expects (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is filled in when absent, on
127.0.0.1, and the backend is gloo on CPU (nccl on GPUs). A torch optimizer is passed in, so no
DeepSpeed optimizer op has to be compiled; JIT-built ops land in ``TORCH_EXTENSIONS_DIR`` (set by the
project's hooks and CLI, ``smpo_pipeline.runtime``). The frozen reference is never handed to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

import torch

from smpo_pipeline.training import checkpoints
from smpo_pipeline.training.config import TrainConfig
from smpo_pipeline.training.schedules import warmup_then_cosine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed_environment() -> None:
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adafactor":
        # torch's Adafactor: factored second moments (memory), a relative LR off; used by the official SDXL runs.
        return torch.optim.Adafactor(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: adamw or adafactor")


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Linear warmup, then constant (the official recipes) or a cosine decay to 0."""
    return warmup_then_cosine(config.warmup_steps, config.steps, config.lr_schedule == "cosine")


def deepspeed_config(config: TrainConfig) -> dict:
    """``config.deepspeed`` with the run's micro-batch, accumulation, clipping and precision."""
    ds = config.deepspeed | {"train_micro_batch_size_per_gpu": config.batch_size,
                             "gradient_accumulation_steps": config.gradient_accumulation,
                             "gradient_clipping": config.grad_clip}
    ds.pop("train_batch_size", None)  # derived: micro-batch × accumulation × world size
    if config.precision in ("bf16", "fp16"):
        ds[config.precision] = ds.get(config.precision, {}) | {"enabled": True}
    if config.optimizer == "adafactor":
        # DeepSpeed vouches only for the optimizers it lists (Adam, AdamW, Adagrad, Lion) and refuses
        # others at start-up. torch's Adafactor trains under ZeRO 2 and 3 (tested); note that ZeRO
        # hands it flat 1-D partitions, so its second moments are kept whole, not factored.
        ds.setdefault("zero_allow_untested_optimizer", True)
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload != "none":
        # The trainer passes a torch optimizer (so DeepSpeed's cpu_adam is never compiled), which then
        # steps on the offloaded CPU copy; DeepSpeed refuses that unless it is told it is intended.
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    return ds


class TorchEngine:
    """Plain PyTorch: gradients accumulate over micro-batches, then clip, step, schedule."""

    deepspeed = None

    def __init__(self, policy, config: TrainConfig) -> None:
        self.policy, self.config = policy, config
        self.optimizer = build_optimizer([p for p in policy.parameters() if p.requires_grad], config)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(config))
        self.module = policy  # what the loss calls

    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss) -> None:
        (loss / self.config.gradient_accumulation).backward()

    def step(self) -> float:
        """One optimiser step; returns the gradient norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip).item()
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @property
    def lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    def whole_weights(self):
        return contextlib.nullcontext()

    def full_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def save(self, root, step: int, generator, rng, **kwargs):
        return checkpoints.save(root, step, self.policy, self.optimizer, self.schedule, self.deepspeed, generator,
                                rng, self.config.keep_last, **kwargs)

    def restore(self, path, generator, rng, **kwargs):
        return checkpoints.restore(path, self.policy, self.optimizer, self.schedule, self.deepspeed, generator, rng,
                                   **kwargs)


def _gloo_all_reduce_on_cpu() -> None:
    """Keep DeepSpeed's CPU backend on gloo's all-reduce. Started on a CPU, DeepSpeed's torch
    backend JIT-compiles a shared-memory all-reduce op (``deepspeed_shm_comm``) with ninja: 44 s on
    two cores, paid again by every new checkout, since the build is keyed by the environment's paths.
    It pays off only for large models on many CPU ranks; the embedded world's one or two ranks
    all-reduce 1.7 M parameters, and GPU runs never use it. DeepSpeed keeps the result of its probe
    for compatible ops in one module-level dict so that edits to it hold; marking the op
    incompatible makes ``build_shm_op`` return None, and the backend uses torch.distributed's gloo."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


class DeepSpeedEngine(TorchEngine):
    """DeepSpeed ZeRO (stage 0–3 from the config): it scales by the accumulation, clips, steps the
    optimizer and the LR schedule at the accumulation boundary, and casts for bf16/fp16."""

    def __init__(self, policy, config: TrainConfig) -> None:
        import deepspeed

        super().__init__(policy, config)
        ensure_distributed_environment()
        if not torch.cuda.is_available():
            _gloo_all_reduce_on_cpu()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
        self.deepspeed, self.optimizer, _, self.schedule = deepspeed.initialize(
            model=policy, optimizer=self.optimizer, lr_scheduler=self.schedule, config=deepspeed_config(config))
        self.module = self.deepspeed

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed's own mixed precision

    def backward(self, loss) -> None:
        self.deepspeed.backward(loss)
        self.deepspeed.step()  # a no-op until the accumulation boundary

    def step(self) -> float:
        return float(self.deepspeed.get_global_grad_norm() or 0.0)

    def cast_like_policy(self, module):
        """A frozen full-weight reference in the engine's dtype (it needs no fp32 master copy)."""
        return module.to(self.deepspeed.module.dtype)

    def whole_weights(self):
        """Under ZeRO-3 the parameters are partitions between steps; gather them for a forward pass."""
        if self.deepspeed.zero_optimization_stage() == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.policy.parameters()))
        return contextlib.nullcontext()

    def full_state(self) -> dict[str, torch.Tensor]:
        with self.whole_weights():
            return {k: v.detach().clone() for k, v in self.deepspeed.module.state_dict().items()}


def build_engine(policy, config: TrainConfig) -> TorchEngine:
    return DeepSpeedEngine(policy, config) if config.deepspeed is not None else TorchEngine(policy, config)
