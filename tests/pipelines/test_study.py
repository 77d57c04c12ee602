"""The ``study`` pipeline on the reduced chain: the chain's clean pairs labelled again at two levels
of the disagreement axis, through Kedro's session and runner."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import CHAIN, run_kedro


@pytest.mark.slow
def test_the_pairs_are_labelled_again_at_each_level_and_each_level_reports_its_agreement(trained_project):
    run_kedro(trained_project, ["study"], CHAIN | {"study": {"levels": [0.0, 1.0]}})
    clean = pd.read_parquet(trained_project / "data/02_intermediate/pairs.parquet")
    labels = pd.read_parquet(trained_project / "data/04_feature/study_labels.parquet")
    assert len(labels) == 2 * len(clean) and sorted(labels.level.unique()) == [0.0, 1.0]
    assert set(labels.pair_id) == set(clean.pair_id)
    assert ((labels.label_0 + labels.label_1) == 1.0).all()
    assert (labels.is_tie == (labels.label_0 == 0.5)).all()
    report = json.loads((trained_project / "reports/study_levels.json").read_text())
    unanimous, random = report["levels"]
    assert unanimous["level"] == 0.0 and unanimous["pairs"] == len(clean)
    # Nearly unanimous annotators follow the oracle (the shipped labels' population is in between).
    assert unanimous["oracle_agreement"] > 0.9 > random["oracle_agreement"]
    assert (trained_project / "reports/figures/study_levels.png").stat().st_size > 5_000
    from kedro.validation.exceptions import ParameterValidationError

    with pytest.raises((ParameterValidationError, ValueError),
                       match=r"(?s)levels.*study levels must be distinct, increasing and in \[0, 1\]"):
        run_kedro(trained_project, ["study"], CHAIN | {"study": {"levels": [0.5, 0.2]}})
