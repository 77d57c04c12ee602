"""relabel at each level → plot the levels' agreement → train and measure the cells → summarize
the study → plot it."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.study.nodes import (
    plot_label_agreement,
    plot_study,
    relabel_at_each_level,
    summarize_study,
    train_and_measure_cells,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(relabel_at_each_level, ["clean_pairs", "params:study", "params:data"],
                 ["study_labels", "study_levels"], name="relabel_at_each_level"),
            Node(plot_label_agreement, "study_levels", "study_levels_figure", name="plot_label_agreement"),
            Node(train_and_measure_cells,
                 ["study_labels", "clean_pairs", "reward_scores", "base_model", "cache_report", "evaluation_prompts",
                  "params:study", "params:train", "params:cache", "params:rewards", "params:reward_model",
                  "params:evaluation", "params:data"],
                 "study_cells", name="train_and_measure_cells"),
            Node(summarize_study, ["study_cells", "study_levels", "params:study"], ["study", "study_table"],
                 name="summarize_study"),
            Node(plot_study, "study", "study_figure", name="plot_study"),
        ],
        tags="study",
    )
