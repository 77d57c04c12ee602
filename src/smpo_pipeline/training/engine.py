"""DeepSpeed ZeRO around the policy UNet (the frozen reference is never handed to it).

One process trains in-process: the distributed environment DeepSpeed expects (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is filled in when absent, on
127.0.0.1, and the backend is gloo on CPU (nccl on GPUs). A torch optimizer is passed in, so no
DeepSpeed optimizer op has to be compiled; JIT-built ops land in ``TORCH_EXTENSIONS_DIR`` (set by
``smpo_pipeline.runtime`` inside the project).
"""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed_environment() -> None:
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def deepspeed_engine(model, optimizer, lr_scheduler, config: dict):
    """(engine, optimizer, scheduler): ``engine.backward(loss)`` and ``engine.step()`` replace the
    usual three lines; gradient clipping and accumulation come from ``config``."""
    import deepspeed
    import torch

    ensure_distributed_environment()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=config
    )
    return engine, optimizer, lr_scheduler
