"""Training checkpoints: everything a resumed run needs to continue the same loss curve.

A checkpoint is a directory ``step-<n>`` (n optimiser steps done) holding the policy and optimizer
(DeepSpeed's own ``save_checkpoint`` under ZeRO — it shards the optimizer; otherwise the policy in
safetensors and the optimizer and LR schedule in a tensors-only torch file), the RNG states (torch's
global one and the trainer's generator, numpy's bit generator: the data position) and ``state.json``.
It is written to a temporary directory and renamed, so a run killed at any moment leaves only whole
checkpoints; the last ``keep_last`` are kept.
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


def save(root: Path, step: int, policy, optimizer, schedule, engine, generator: torch.Generator, rng, keep_last: int) -> Path:
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if engine is not None:
        engine.save_checkpoint(str(tmp), tag="engine", save_latest=False)
    else:
        save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, tmp / "policy.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "generator": generator.get_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "numpy_rng": rng.bit_generator.state}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _complete(root)[:-keep_last]:
        shutil.rmtree(old)
    return final


def restore(path: Path, policy, optimizer, schedule, engine, generator: torch.Generator, rng) -> int:
    """Load a checkpoint into the live objects; returns the number of steps already done."""
    from safetensors.torch import load_file

    path = Path(path)
    if engine is not None:
        engine.load_checkpoint(str(path), tag="engine")
    else:
        policy.load_state_dict(load_file(path / "policy.safetensors"))
        state = torch.load(path / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    rng_state = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng_state["torch"])
    generator.set_state(rng_state["generator"])
    state = json.loads((path / "state.json").read_text())
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"])
