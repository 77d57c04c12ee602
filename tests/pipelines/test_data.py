"""The ``data`` pipeline through Kedro's session and runner, on broken and clean shards."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from smpo_pipeline.ingest.shards import DataValidationError
from tests.conftest import make_kedro_project, run_kedro
from tests.pickapic_factory import valid_rows, write_shard


def test_data_pipeline_through_kedro(tmp_path, broken_shard):
    """The ``data`` pipeline on the broken shard plus a clean one, through Kedro's session: the
    report balances, the pair table splits by caption, a low valid share stops the run."""
    path, rows = broken_shard
    project = make_kedro_project(tmp_path / "project")
    raw = project / "data/01_raw/pickapic"
    raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, raw / "shard-0.parquet")
    write_shard(raw / "shard-1.parquet", valid_rows(30, seed=9, start=100))
    run_kedro(project, ["data"])
    report = json.loads((project / "reports/data_validation.json").read_text())
    assert report["input_rows"] == len(rows) + 30 and report["written"] == {"pairs": report["valid"], "quarantine": 12}
    assert report["valid"] + report["dropped_ties"] + report["dropped_identical"] + report["quarantined"] == len(rows) + 30
    quarantine = pq.read_table(project / "data/02_intermediate/quarantine.parquet")
    assert quarantine.num_rows == report["quarantined"] == 12
    pairs = pd.read_parquet(project / "data/02_intermediate/pairs.parquet")
    assert len(pairs) == report["valid"]
    sides = pairs.groupby("caption")["split"].nunique()
    assert (sides == 1).all() and pairs["image_0_file"].notna().all()

    with pytest.raises(DataValidationError, match=r"rows are valid .* < data.min_valid_share 95%"):
        run_kedro(project, ["data"], {"data": {"min_valid_share": 0.95}})
