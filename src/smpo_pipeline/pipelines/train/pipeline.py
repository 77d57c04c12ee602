"""train DPO model, train SmPO model, train DRO model (each once per seed) → plot their learning curves →
compare models on the validation prompts."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.train.nodes import (
    compare_on_validation_prompts,
    plot_learning_curves,
    train_dpo,
    train_dro,
    train_smpo,
)


def create_pipeline(**kwargs) -> Pipeline:
    # cache_report ties training to the cache it reads (and is checked against the base model).
    inputs = ["preference_pairs", "base_model", "cache_report", "prompts_validation", "params:train", "params:cache"]
    return Pipeline(
        [
            Node(train_dpo, inputs, ["dpo_model", "dpo_replicas", "dpo_training_summary"], name="train_dpo"),
            Node(train_smpo, inputs, ["smpo_model", "smpo_replicas", "smpo_training_summary"], name="train_smpo"),
            Node(train_dro, inputs, ["dro_model", "dro_replicas", "dro_training_summary"], name="train_dro"),
            Node(plot_learning_curves, ["dpo_training_summary", "smpo_training_summary", "dro_training_summary",
                                        "params:train"], "learning_curves_plot", name="plot_learning_curves"),
            Node(compare_on_validation_prompts,
                 ["base_model", "dpo_model", "smpo_model", "dro_model", "prompts_validation", "params:train",
                  "params:world", "dpo_training_summary", "smpo_training_summary", "dro_training_summary"],
                 "training_report", name="compare_on_validation_prompts"),
        ],
        tags="train",
    )
