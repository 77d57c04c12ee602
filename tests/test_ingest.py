"""Ingestion of Pick-a-Pic v2 shards: every kind of broken input, handled and accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smpo_pipeline.ingest.images import inspect_image
from smpo_pipeline.ingest.shards import (
    DataValidationError,
    IngestSettings,
    caption_split,
    summarise,
    validate_shards,
)
from smpo_pipeline.keys import content_uid
from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA
from tests.conftest import PROJECT_ROOT
from tests.pickapic_factory import png_header_only, valid_rows, write_shard

SUITE = json.loads((PROJECT_ROOT / "conf/base/expectations/pickapic_v2.json").read_text())


def settings(drop_ties: bool = True) -> IngestSettings:
    return IngestSettings(max_image_side=4096, min_image_side=8, drop_ties=drop_ties, suite=SUITE)


def run(raw: Path, work: Path, drop_ties: bool = True):
    results = list(validate_shards(raw, work, settings(drop_ties), progress=False))
    return results, summarise(results, [])


def quarantine_reasons(work: Path) -> dict[int, str]:
    rows = {}
    for path in sorted(work.glob("*.quarantine.parquet")):
        for r in pq.read_table(path).to_pylist():
            rows[r["__index_level_0__"]] = r["reason"]
    return rows


def test_every_broken_row_is_quarantined_with_its_reason_and_nothing_is_lost(broken_shard, tmp_path):
    path, rows = broken_shard
    _, summary = run(path.parent, tmp_path / "work")
    reasons = quarantine_reasons(tmp_path / "work")
    expected = {
        1: "jpg_0 does not decode to RGB: undecodable",
        2: "jpg_1 does not decode to RGB: corrupt",
        3: "jpg_0 does not decode to RGB: empty bytes",
        4: "jpg_1 does not decode to RGB: decompression bomb",
        8: "caption is empty",
        11: "label_0 not in {0, 0.5, 1}",
        12: "label_0 + label_1 != 1",
        14: "caption is empty",
        15: "jpg_0 width out of bounds",
        18: "has_label is false",
        19: "best_image_uid disagrees with the labels",
        24: "duplicate row: shard-0.parquet row 20",
    }
    assert set(reasons) == set(expected)
    for row, reason in expected.items():
        assert reason in reasons[row], (row, reasons[row])
    assert "label_0 + label_1 != 1" in reasons[11]  # 0.7 + 0 also breaks the sum: both reasons kept
    assert summary["dropped_ties"] == 1 and summary["dropped_identical"] == 2
    assert summary["quarantined"] == len(expected)
    assert summary["valid"] + summary["dropped_ties"] + summary["dropped_identical"] + summary["quarantined"] == len(rows)
    valid = pq.read_table(tmp_path / "work" / "shard-0.pairs.parquet").column("source_row").to_pylist()
    for fine in (5, 6, 7, 9, 10):
        assert fine in valid


def test_quarantine_keeps_rows_unchanged(broken_shard, tmp_path):
    path, rows = broken_shard
    run(path.parent, tmp_path / "work")
    quarantined = pq.read_table(tmp_path / "work" / "shard-0.quarantine.parquet")
    assert quarantined.schema.names[: len(PICKAPIC_V2_SCHEMA)] == PICKAPIC_V2_SCHEMA.names
    for r in quarantined.to_pylist():
        original = rows[r["source_row"]]
        assert {k: r[k] for k in original} == original


def test_ties_can_be_kept(broken_shard, tmp_path):
    path, _ = broken_shard
    _, summary = run(path.parent, tmp_path / "work", drop_ties=False)
    pairs = pq.read_table(tmp_path / "work" / "shard-0.pairs.parquet").to_pylist()
    assert summary["dropped_ties"] == 0 and sum(p["is_tie"] for p in pairs) == 1


def test_images_are_stored_once_byte_for_byte(tmp_path):
    rows = valid_rows(4)
    rows[1]["image_0_uid"], rows[1]["jpg_0"] = rows[0]["image_0_uid"], rows[0]["jpg_0"]  # same image twice
    write_shard(tmp_path / "raw" / "a.parquet", rows)
    run(tmp_path / "raw", tmp_path / "work")
    images = pq.read_table(tmp_path / "work" / "a.images.parquet").to_pylist()
    assert len(images) == 7
    by_uid = {i["image_uid"]: i["jpg"] for i in images}
    assert by_uid[content_uid(rows[0]["jpg_0"])] == rows[0]["jpg_0"]


def test_an_image_is_keyed_by_its_bytes_not_by_the_uid_its_source_gave_it(tmp_path):
    """Caches downstream key their work by image uid: a replaced image under the source's old uid
    must be a new image to them, and the same bytes under two source uids one image."""
    rows = valid_rows(3)
    # A source uid reused for other bytes (row 1 prefers its image 1, so its choice follows it) ...
    rows[1]["image_1_uid"] = rows[1]["best_image_uid"] = rows[0]["image_0_uid"]
    rows[2]["jpg_1"] = rows[0]["jpg_0"]  # ... and the same bytes under another source uid
    write_shard(tmp_path / "raw" / "a.parquet", rows)
    _, summary = run(tmp_path / "raw", tmp_path / "work")
    assert summary["valid"] == 3, summary
    pairs = pq.read_table(tmp_path / "work" / "a.pairs.parquet").to_pylist()
    images = {i["image_uid"]: i["jpg"] for i in pq.read_table(tmp_path / "work" / "a.images.parquet").to_pylist()}
    assert len(images) == 5  # six images, two of them the same bytes
    assert pairs[0]["image_0_uid"] != pairs[1]["image_1_uid"]  # same source uid, other bytes: two images
    assert pairs[1]["image_1_source_uid"] == rows[0]["image_0_uid"]  # the source's uid is kept beside it
    assert pairs[2]["image_1_uid"] == pairs[0]["image_0_uid"]  # same bytes: one image
    assert all(images[p[f"image_{k}_uid"]] == rows[r][f"jpg_{k}"] for r, p in enumerate(pairs) for k in (0, 1))


def test_duplicates_are_found_across_shards(tmp_path):
    rows = valid_rows(3)
    write_shard(tmp_path / "raw" / "a.parquet", rows)
    write_shard(tmp_path / "raw" / "b.parquet", [dict(rows[2], __index_level_0__=99), *valid_rows(2, seed=1)])
    _, summary = run(tmp_path / "raw", tmp_path / "work")
    assert summary["quarantine_reasons"] == {"duplicate row: a.parquet row 2": 1}


@pytest.mark.parametrize(
    ("schema_change", "message"),
    [
        (lambda s: s.remove(s.get_field_index("label_1")), r"b\.parquet: missing required column 'label_1'"),
        (lambda s: s.set(s.get_field_index("label_0"), pa.field("label_0", pa.string())),
         r"b\.parquet: column 'label_0' has type string, expected double"),
    ],
)
def test_a_shard_with_a_wrong_schema_stops_the_run_naming_file_and_column(tmp_path, schema_change, message):
    write_shard(tmp_path / "raw" / "a.parquet", valid_rows(2))
    rows, schema = valid_rows(2, seed=3), schema_change(PICKAPIC_V2_SCHEMA)
    if schema.field("label_0").type == pa.string():
        for r in rows:
            r["label_0"] = str(r["label_0"])
    write_shard(tmp_path / "raw" / "b.parquet", rows, schema)
    with pytest.raises(DataValidationError, match=message):
        run(tmp_path / "raw", tmp_path / "work")


def test_an_unreadable_parquet_file_is_named_and_other_files_are_ignored(tmp_path):
    write_shard(tmp_path / "raw" / "a.parquet", valid_rows(2))
    (tmp_path / "raw" / "README.txt").write_text("not data")
    from smpo_pipeline.ingest.shards import list_shards

    shards, ignored = list_shards(tmp_path / "raw")
    assert [p.name for p in shards] == ["a.parquet"] and [p.name for p in ignored] == ["README.txt"]
    (tmp_path / "raw" / "z.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataValidationError, match=r"z\.parquet: not a readable parquet file"):
        run(tmp_path / "raw", tmp_path / "work")


def test_rerun_reuses_unchanged_shards_and_rebuilds_changed_or_corrupted_ones(tmp_path):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_shard(tmp_path / "raw" / f"{name}.parquet", valid_rows(3, seed=seed))
    first, s1 = run(tmp_path / "raw", tmp_path / "work")
    assert [r.reused for r in first] == [False, False, False]
    again, s2 = run(tmp_path / "raw", tmp_path / "work")
    assert [r.reused for r in again] == [True, True, True]
    assert {k: v for k, v in s1.items() if k != "shards"} == {k: v for k, v in s2.items() if k != "shards"}

    write_shard(tmp_path / "raw" / "b.parquet", valid_rows(4, seed=5))  # b changed: b and c re-run
    changed, _ = run(tmp_path / "raw", tmp_path / "work")
    assert [r.reused for r in changed] == [True, False, False]

    (tmp_path / "work" / "a.pairs.parquet").write_bytes(b"garbage")  # a corrupted cache is rebuilt,
    rebuilt, _ = run(tmp_path / "raw", tmp_path / "work")  # the others still match their inputs
    assert [r.reused for r in rebuilt] == [False, True, True]
    assert pq.read_table(tmp_path / "work" / "a.pairs.parquet").num_rows == 3


def test_inspect_image_checks_the_header_before_decoding():
    assert inspect_image(png_header_only(300, 200), max_side=4096).error  # header fine, no pixels
    big = inspect_image(png_header_only(5000, 100), max_side=4096)
    assert (big.width, big.height, big.error) == (5000, 100, None)  # left to the bounds expectation


def test_caption_split_is_deterministic_and_roughly_proportional():
    captions = [f"caption {i}" for i in range(2000)]
    sides = [caption_split(c, 0.1) for c in captions]
    assert sides == [caption_split(c, 0.1) for c in captions]
    assert 0.07 < sides.count("validation") / len(sides) < 0.13
