"""Diffusion-DRO's online half: states of the policy's own sampling trajectories, in a replay buffer.

As ``basiclab/DiffusionDRO`` does it (``docs/objectives.md``): the current policy
samples images for the batch's prompts with DPM-Solver++ (20 steps, guidance 1.0), each sample on
its own timestep grid shifted by a random jitter so that the stored states cover every t, not just
the 20 grid points. From each trajectory one state is kept: the latent x_t, its timestep t and the
sampler's own noise prediction ε there, which becomes the policy half's target. The sampling
network is the policy refreshed every ``refresh_every`` optimiser steps (M = 1: the policy itself).

The buffer is a FIFO of the last ``capacity`` states; a training batch draws from it uniformly.
Everything in it is tensors, so it goes into a checkpoint as one safetensors file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smpo_pipeline.inversion import predict_noise


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    steps: int = 20  # DPM-Solver++ steps (official 20)
    guidance_scale: float = 1.0  # official 1.0: the conditional prediction alone
    jitter: bool = True  # shift each sample's grid by a random offset in [0, 1000 / steps)


def jittered_timesteps(steps: int, offset: int, num_train_timesteps: int = 1000) -> list[int]:
    """The sampler's descending grid (999, 949, …, 49 for 20 steps) shifted down by ``offset``."""
    stride = num_train_timesteps // steps
    return [int(t) - offset for t in range(num_train_timesteps - 1, stride - 2, -stride)][:steps]


@torch.no_grad()
def sample_policy_states(unet, cond: dict, latent_shape, noise_schedule: dict, config: SamplerConfig,
                         generator: torch.Generator):
    """One (x_t, t, ε) per prompt of ``cond``: a random state of a DPM-Solver++ trajectory.

    Each sample runs on its own jittered grid and leaves the batch once it has reached the state it
    keeps: the UNet sees only the samples still running, so a refill costs on average half the
    steps' forward passes (with many samples the last one to finish runs nearly all of them)."""
    from diffusers import DPMSolverMultistepScheduler

    n = cond["prompt_embeds"].shape[0]
    stride = noise_schedule.get("num_train_timesteps", 1000) // config.steps
    offsets = torch.randint(0, stride, (n,), generator=generator) if config.jitter else torch.zeros(n, dtype=torch.long)
    keep = torch.randint(0, config.steps, (n,), generator=generator)
    device = cond["prompt_embeds"].device
    z = torch.randn((n, *latent_shape), generator=generator).to(device)
    schedulers = []
    for offset in offsets.tolist():
        scheduler = DPMSolverMultistepScheduler(**noise_schedule, algorithm_type="dpmsolver++", solver_order=2)
        scheduler.set_timesteps(timesteps=jittered_timesteps(config.steps, offset))
        schedulers.append(scheduler)
    grids = torch.tensor([s.timesteps.tolist() for s in schedulers])  # [n, steps]
    z = z * schedulers[0].init_noise_sigma
    kept_x, kept_eps = torch.empty_like(z), torch.empty_like(z)
    running = torch.arange(n)  # the samples that have not yet reached their kept state
    for i in range(int(keep.max()) + 1):
        t = grids[running, i].to(device)
        eps = predict_noise(unet, z, t, {k: v[running] for k, v in cond.items()}, config.guidance_scale).to(z.dtype)
        here = keep[running] == i
        kept_x[running[here]], kept_eps[running[here]] = z[here], eps[here]
        # Only the samples that go on take a solver step (each its own multistep scheduler).
        going = ~here
        z = torch.cat([schedulers[j].step(eps[k : k + 1], int(t[k]), z[k : k + 1]).prev_sample
                       for k, j in zip(going.nonzero().flatten().tolist(), running[going].tolist(), strict=True)]
                      or [z[:0]])
        running = running[going]
    return kept_x, grids[torch.arange(n), keep], kept_eps


class ReplayBuffer:
    """The last ``capacity`` policy states, each with the row of the expert it is paired with."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.x_t = self.timesteps = self.targets = self.rows = None

    def __len__(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    def add(self, x_t, timesteps, targets, rows) -> None:
        new = (x_t.detach().cpu(), timesteps.cpu(), targets.detach().cpu(), torch.as_tensor(rows).long())
        if self.rows is None:
            old = new
        else:
            old = tuple(torch.cat([a, b]) for a, b in zip((self.x_t, self.timesteps, self.targets, self.rows), new, strict=True))
        self.x_t, self.timesteps, self.targets, self.rows = (a[-self.capacity:] for a in old)

    def draw(self, n: int, rng: np.random.Generator):
        """(x_t, t, ε, expert rows) of ``n`` states drawn uniformly (without replacement if it can)."""
        idx = torch.as_tensor(rng.choice(len(self), n, replace=len(self) < n))
        return self.x_t[idx], self.timesteps[idx], self.targets[idx], self.rows[idx]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.rows is None:
            return {}
        return {"x_t": self.x_t.contiguous(), "timesteps": self.timesteps.contiguous(),
                "targets": self.targets.contiguous(), "rows": self.rows.contiguous()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.x_t, self.timesteps, self.targets, self.rows = (state[k] for k in ("x_t", "timesteps", "targets", "rows"))
