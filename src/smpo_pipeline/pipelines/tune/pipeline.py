"""run the SmPO study (train + validate per trial, median pruning, sqlite storage) → best parameters,
optimisation history and parameter importances."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.tune.nodes import plot_study, run_smpo_study


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(run_smpo_study,
                 ["preference_pairs", "base_model", "cache_report", "prompts_validation", "params:tune", "params:train",
                  "params:cache", "params:world"],
                 ["tuning_best_params", "tuning_report"], name="run_smpo_study"),
            Node(plot_study, ["tuning_report", "params:tune"], ["tuning_history_plot", "tuning_importance_plot"],
                 name="plot_study"),
        ],
        tags="tune",
    )
