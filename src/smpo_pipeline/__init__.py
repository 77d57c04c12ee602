"""smpo_pipeline: align SDXL-architecture diffusion models with human preferences
(SmPO-Diffusion, Diffusion-DPO, Diffusion-DRO) as Kedro pipelines.

Importing any of its modules changes nothing in the process. The project's own environment (no
telemetry, offline hub by default, its tools first on PATH) is set by the Kedro hooks
(``smpo_pipeline.hooks``) and by the entry points that run outside Kedro (``python -m
smpo_pipeline``, the torchrun entry points): see ``smpo_pipeline.runtime``.
"""

__version__ = "0.1.0"
