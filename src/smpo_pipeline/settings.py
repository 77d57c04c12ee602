"""Kedro project settings."""

from smpo_pipeline.hooks import ProjectEnvironmentHooks

HOOKS = (ProjectEnvironmentHooks(),)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
