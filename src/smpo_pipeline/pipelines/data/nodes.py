"""Nodes of the ``data`` pipeline: thin adapters over ``smpo_pipeline.ingest``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from smpo_pipeline.params import DataParams

log = logging.getLogger(__name__)


def _settings(data: DataParams):
    from smpo_pipeline.ingest.shards import IngestSettings

    path = Path(data.expectations)
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"data.expectations: cannot read the expectation suite {path}: {exc}") from exc
    return IngestSettings(data.max_image_side, data.min_image_side, data.drop_ties, suite)


def validate_raw_shards(pickapic_raw: list, data: DataParams) -> dict:
    """Every shard under ``data.raw_dir``, one at a time, through the expectation suite. Shards whose
    outputs are intact and up to date are reused, not re-validated.

    ``pickapic_raw`` (the bootstrap's output in the embedded world) ties this stage to the one that
    writes the shards; the shards read are those under ``data.raw_dir``.
    """
    from smpo_pipeline.ingest.shards import list_shards, summarise, validate_shards

    raw_dir = Path(data.raw_dir)
    if pickapic_raw and Path(pickapic_raw[0]).resolve().parent != raw_dir.resolve():
        log.info("data.raw_dir (%s) is not the catalog's pickapic_raw directory; reading %s", raw_dir, raw_dir)
    _, ignored = list_shards(raw_dir)
    for path in ignored:
        log.warning("%s is not a .parquet file: ignored (listed in reports/data_validation.json)", path)
    results = list(validate_shards(raw_dir, Path(data.work_dir), _settings(data)))
    reused = sum(r.reused for r in results)
    log.info("Validated %d shards (%d reused unchanged)", len(results), reused)
    return summarise(results, ignored)


def assemble_clean_pairs(shard_validation: dict, data: DataParams):
    """The clean pair table (split by caption), the quarantine (every rejected row, unchanged, with
    its reason) and the report — after checking that no row was lost and enough are valid."""
    import pandas as pd
    import pyarrow.parquet as pq

    from smpo_pipeline.ingest.shards import DataValidationError, caption_split

    s = shard_validation
    valid_share = s["valid"] / max(s["input_rows"], 1)
    if valid_share < data.min_valid_share:
        raise DataValidationError(
            f"only {s['valid']} of {s['input_rows']} rows are valid ({valid_share:.1%} < data.min_valid_share "
            f"{data.min_valid_share:.0%}): dropped_ties {s['dropped_ties']}, dropped_identical "
            f"{s['dropped_identical']}, quarantined {s['quarantined']} {s['quarantine_reasons']}"
        )
    work_dir = Path(data.work_dir)
    names = [Path(shard["shard"]).stem for shard in s["shards"]]
    pairs = pd.concat([pd.read_parquet(work_dir / f"{n}.pairs.parquet") for n in names], ignore_index=True)
    pairs["split"] = [caption_split(c, data.validation_share) for c in pairs["caption"]]
    where = {}  # image uid → the images file holding its bytes (each image is stored once)
    for n in names:
        for uid in pq.read_table(work_dir / f"{n}.images.parquet", columns=["image_uid"]).column(0).to_pylist():
            where.setdefault(uid, f"{n}.images.parquet")
    pairs["image_0_file"] = pairs["image_0_uid"].map(where)
    pairs["image_1_file"] = pairs["image_1_uid"].map(where)

    # The balance is checked on what was written, not on the counters that produced it: every input
    # row is in the pairs, in the quarantine, or counted as a dropped tie or identical pair.
    quarantined = sum(pq.read_metadata(work_dir / f"{n}.quarantine.parquet").num_rows for n in names)
    accounted = len(pairs) + quarantined + s["dropped_ties"] + s["dropped_identical"]
    if accounted != s["input_rows"]:
        raise DataValidationError(
            f"rows lost: {len(pairs)} pairs written + {quarantined} quarantined rows written + dropped_ties "
            f"{s['dropped_ties']} + dropped_identical {s['dropped_identical']} = {accounted} != input_rows {s['input_rows']}"
        )
    quarantine = (pq.read_table(work_dir / f"{n}.quarantine.parquet") for n in names)
    split_counts = pairs["split"].value_counts().to_dict()
    report = {k: v for k, v in s.items() if k != "shards"} | {
        "valid_share": round(valid_share, 4),
        "written": {"pairs": len(pairs), "quarantine": quarantined},
        "policy": {"drop_ties": data.drop_ties, "drop_identical": True,
                   "max_image_side": data.max_image_side, "min_image_side": data.min_image_side},
        "pairs": {"train": int(split_counts.get("train", 0)), "validation": int(split_counts.get("validation", 0))},
        "captions": {"train": int(pairs.loc[pairs.split == "train", "caption"].nunique()),
                     "validation": int(pairs.loc[pairs.split == "validation", "caption"].nunique())},
        "images_stored": len(where),
        "shards": s["shards"],
    }
    log.info("Data: %d rows → %d valid, %d ties dropped, %d identical dropped, %d quarantined",
             s["input_rows"], s["valid"], s["dropped_ties"], s["dropped_identical"], s["quarantined"])
    return pairs, quarantine, report
