"""Training checkpoints: everything a resumed run needs to continue the same loss curve.

A checkpoint is a directory ``step-<n>`` (n optimiser steps done) holding:

- the policy and optimizer: DeepSpeed's own ``save_checkpoint`` under ZeRO (collective; it shards
  the optimizer over ranks), otherwise the trainable weights in safetensors and the optimizer and LR
  schedule in a tensors-only torch file (loaded with ``weights_only=True``);
- per rank: the RNG states (torch's global one and the trainer's generator) in ``rng-rank<r>.pt``,
  numpy's bit generator (the data position) in ``data-rank<r>.json``, and extra tensors such as
  DRO's replay buffer in ``extra-rank<r>.safetensors``;
- shared tensors (DRO's sampling network when it lags the policy) in ``shared.safetensors``;
- ``state.json`` (step, world size), written last.

It is written to a temporary directory and renamed by rank 0 once every rank has written its part,
so a run killed at any moment leaves only whole checkpoints; the last ``keep_last`` are kept. A
checkpoint resumes only with the world size that wrote it (each rank's data position is its own).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def _complete(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())


def latest(root: Path) -> Path | None:
    found = _complete(Path(root)) if Path(root).is_dir() else []
    return found[-1] if found else None


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def trainable_state(module) -> dict[str, torch.Tensor]:
    """The parameters that train (all of them, or LoRA's adapters), contiguous for safetensors."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous() for k, v in module.state_dict().items() if k in names}


def save(root: Path, step: int, policy, optimizer, schedule, engine, generator: torch.Generator, rng, keep_last: int,
         *, rank: int = 0, world_size: int = 1, extra: dict | None = None, shared: dict | None = None) -> Path:
    from safetensors.torch import save_file

    root = Path(root)
    final = root / f"step-{step:07d}"
    tmp = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier(world_size)
    if engine is not None:
        engine.save_checkpoint(str(tmp), tag="engine", save_latest=False)
    elif rank == 0:
        save_file(trainable_state(policy), tmp / "policy.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "generator": generator.get_state()}, tmp / f"rng-rank{rank}.pt")
    (tmp / f"data-rank{rank}.json").write_text(json.dumps({"numpy_rng": rng.bit_generator.state}))
    if extra:
        save_file(extra, tmp / f"extra-rank{rank}.safetensors")
    if shared and rank == 0:
        save_file(shared, tmp / "shared.safetensors")
    _barrier(world_size)
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": world_size}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _complete(root)[:-keep_last]:
            shutil.rmtree(old)
    _barrier(world_size)
    return final


def restore(path: Path, policy, optimizer, schedule, engine, generator: torch.Generator, rng,
            *, rank: int = 0, world_size: int = 1) -> tuple[int, dict, dict]:
    """Load a checkpoint into the live objects; returns (steps done, this rank's extra tensors,
    the shared tensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("world_size", 1) != world_size:
        raise ValueError(f"{path} was written by {state.get('world_size', 1)} processes; resuming it with "
                         f"{world_size} would change every rank's data order. Use the same number of processes "
                         "or start a new run (another checkpoint directory).")
    if engine is not None:
        engine.load_checkpoint(str(path), tag="engine")
    else:
        saved_weights = load_file(path / "policy.safetensors")
        if set(saved_weights) != set(trainable_state(policy)):
            raise ValueError(f"{path}: its weights are not this run's trainable parameters (LoRA vs full fine-tune?)")
        policy.load_state_dict(saved_weights, strict=False)
        saved = torch.load(path / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
    rng_state = torch.load(path / f"rng-rank{rank}.pt", weights_only=True)
    torch.set_rng_state(rng_state["torch"])
    generator.set_state(rng_state["generator"])
    rng.bit_generator.state = json.loads((path / f"data-rank{rank}.json").read_text())["numpy_rng"]
    extra = load_file(path / f"extra-rank{rank}.safetensors") if (path / f"extra-rank{rank}.safetensors").exists() else {}
    shared = load_file(path / "shared.safetensors") if (path / "shared.safetensors").exists() else {}
    return int(state["step"]), extra, shared
