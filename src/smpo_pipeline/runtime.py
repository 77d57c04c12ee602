"""The environment the project sets for itself, so a user sets nothing.

- Telemetry and analytics off for Kedro, DVC, Great Expectations and the HF hub.
- ``HF_HUB_OFFLINE=1``: the embedded default never downloads. The ``sdxl`` environment turns it
  off through the ``runtime.hf_hub_offline`` parameter (see ``hooks.py``) so a user's own access
  to SDXL weights keeps working. A value the user exported wins over both.
- DeepSpeed's JIT-compiled ops are cached inside the project (``TORCH_EXTENSIONS_DIR``).
- The tools installed next to this interpreter (``dvc``, ``deepspeed``, ``torchrun``, ``ninja``) come
  first on ``PATH``, also when the virtual environment is not activated. Otherwise a system ``ninja``
  of another version shared the op cache with the environment's and each rebuilt the op (~40 s)
  that the other had built.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ENVIRONMENT: dict[str, str] = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# Keys the user had exported before the project first set its own: those are never overridden.
USER_SET: set[str] = set()
_applied = False


def apply_project_environment(project_root: Path | None = None) -> None:
    global _applied
    if not _applied:
        USER_SET.update(k for k in PROJECT_ENVIRONMENT if k in os.environ)
        _applied = True
    for key, value in PROJECT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    root = project_root or Path.cwd()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(root / "data" / "cache" / "torch_extensions"))
    tools = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != tools:
        os.environ["PATH"] = os.pathsep.join(p for p in (tools, os.environ.get("PATH")) if p)


def set_hf_hub_offline(offline: bool) -> None:
    """Per-environment hub access (``runtime.hf_hub_offline``), unless the user exported it."""
    if "HF_HUB_OFFLINE" not in USER_SET:
        os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size, as torchrun / the DeepSpeed launcher set them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


PROCESS_GROUP_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun_command(num_processes: int, module: str, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m module args`` with this interpreter."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", module, *args]


def deepspeed_command(hostfile: str | None, num_processes: int, module: str, *args: str) -> list[str]:
    """DeepSpeed's launcher running ``module args``: with a hostfile, one process per slot of every
    host in it (reached over passwordless ssh/pdsh, even for localhost); without one, ``num_processes``
    on this machine."""
    import shutil
    import sys

    # The launcher installed next to this interpreter (a venv that is not activated is not on PATH).
    beside = Path(sys.executable).parent / "deepspeed"
    launcher = str(beside) if beside.is_file() else shutil.which("deepspeed") or "deepspeed"
    where = ["--hostfile", hostfile] if hostfile else ["--num_gpus", str(num_processes)]
    return [launcher, *where, "--no_local_rank", "--module", module, *args]


def environment_without_process_group() -> dict[str, str]:
    """This process's environment less the variables of a process group it may have joined
    in-process (DeepSpeed), so that a child process starts a group of its own."""
    return {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARIABLES}


def set_torch_threads(num_threads: int | None) -> None:
    """Use ``num_threads`` intra-op threads (``None``/0: torch's default, one per core)."""
    import torch

    if num_threads:
        torch.set_num_threads(int(num_threads))
