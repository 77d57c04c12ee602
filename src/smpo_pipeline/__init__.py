"""smpo_pipeline: align SDXL-architecture diffusion models with human preferences
(SmPO-Diffusion, Diffusion-DPO, Diffusion-DRO) as Kedro pipelines.

Importing the package sets the project's own environment (no telemetry, offline hub by default):
see ``smpo_pipeline.runtime``.
"""

from smpo_pipeline.runtime import apply_project_environment

apply_project_environment()

__version__ = "0.1.0"
