"""Project hooks: the project's own environment, and parameters validated before anything runs."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from smpo_pipeline.params import validate_parameters
from smpo_pipeline.runtime import apply_project_environment, set_hf_hub_offline, set_torch_threads


class ProjectEnvironmentHooks:
    @hook_impl
    def after_context_created(self, context) -> None:
        apply_project_environment(context.project_path)
        # Validated on load: a wrong key or value stops the run here, naming the key.
        params = validate_parameters(context.params)
        set_hf_hub_offline(params.runtime.hf_hub_offline)
        set_torch_threads(params.runtime.num_threads)  # 0 imports nothing: `kedro viz build` stays quick
