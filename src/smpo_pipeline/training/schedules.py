"""Learning-rate schedules shared by the preference loop (``training.engine``) and the bootstrap's
pretraining (``training.pretraining``)."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_then_cosine(warmup_steps: int, steps: int, cosine: bool) -> Callable[[int], float]:
    """The LR factor: linear warm-up, then constant or a cosine decay to 0 at ``steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))))

    return factor
