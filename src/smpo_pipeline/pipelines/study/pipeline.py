"""relabel at each level → plot the levels' agreement."""

from kedro.pipeline import Node, Pipeline

from smpo_pipeline.pipelines.study.nodes import plot_label_agreement, relabel_at_each_level


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(relabel_at_each_level, ["clean_pairs", "params:study", "params:data"],
                 ["study_labels", "study_levels"], name="relabel_at_each_level"),
            Node(plot_label_agreement, "study_levels", "study_levels_figure", name="plot_label_agreement"),
        ],
        tags="study",
    )
