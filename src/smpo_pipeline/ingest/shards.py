"""Validating Pick-a-Pic v2 shards one at a time, so memory is bounded by one shard.

For each shard:

1. the parquet schema is checked (a missing column or a wrong type stops the run, naming the file
   and the column);
2. a *validation frame* is derived row by row: the labels and captions as they are, plus what Great
   Expectations cannot compute itself — each image's header size, whether it decodes to RGB
   (``images.inspect_image``), whether the two images are identical, whether the row duplicates an
   earlier one (in this shard or any earlier shard), whether ``best_image_uid`` agrees with the
   labels;
3. the expectation suite (``conf/base/expectations/pickapic_v2.json``) is validated on that frame
   with an ephemeral GX context; every failed expectation names the rows it failed on, and its
   ``meta.action`` says what they become: *quarantined* (with the reason), *dropped_identical* or
   *dropped_tie* (policies). A row failing several quarantine expectations carries every reason.

Outputs of a shard go to ``work_dir`` as ``<shard>.{pairs,images,quarantine,keys}.parquet`` plus the
GX result, and a ``<shard>.done.json`` written last, holding the shard's fingerprint and the
checksums of its outputs: a re-run reuses a shard only when its fingerprint matches and its outputs
are intact. The fingerprint chains the previous shard's (duplicates look backwards), so changing a
shard re-validates it and those after it, nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smpo_pipeline.ingest.images import inspect_image
from smpo_pipeline.keys import code_digest, content_uid, digest, file_sha256
from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA

log = logging.getLogger(__name__)

OPTIONAL_COLUMNS = frozenset(
    {"image_0_url", "image_1_url", "model_0", "model_1", "ranking_id", "user_id",
     "num_example_per_prompt", "created_at", "__index_level_0__"}
)
REQUIRED_COLUMNS = [f for f in PICKAPIC_V2_SCHEMA if f.name not in OPTIONAL_COLUMNS]
ACTIONS = ("quarantine", "drop_identical", "drop_tie")


class DataValidationError(ValueError):
    """Input that cannot be ingested at all (named file and column), or too little valid data."""


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    families = [
        (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
        (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view),
    ]
    for family in families:
        if any(f(expected) for f in family):
            return any(f(actual) for f in family)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    return False


def read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as exc:  # whatever pyarrow says, name the file
        raise DataValidationError(f"{path}: not a readable parquet file ({exc})") from exc


def check_schema(schema: pa.Schema, path: Path) -> None:
    """Raise naming the file and the first missing or mistyped required column."""
    for expected in REQUIRED_COLUMNS:
        if expected.name not in schema.names:
            raise DataValidationError(f"{path}: missing required column '{expected.name}'")
        actual = schema.field(expected.name).type
        if not _compatible(actual, expected.type):
            raise DataValidationError(
                f"{path}: column '{expected.name}' has type {actual}, expected {expected.type}"
            )


@dataclass(frozen=True)
class IngestSettings:
    max_image_side: int
    min_image_side: int
    drop_ties: bool
    suite: dict  # the parsed expectation-suite JSON

    def fingerprint(self) -> str:
        # The validation code is part of it (keys.code_digest): changed rules re-validate every shard.
        return digest(code_digest("smpo_pipeline.ingest.shards"), self.max_image_side, self.min_image_side,
                      self.drop_ties, self.suite)


@dataclass
class ShardResult:
    shard: str
    input_rows: int
    counts: dict[str, int]  # valid, dropped_ties, dropped_identical, quarantined
    reasons: dict[str, int]
    expectations: list[dict]
    outputs: dict[str, str]
    reused: bool = False
    fingerprint: str = ""


# --------------------------------------------------------------------------- validation frame


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def _row_key(caption, sha0, sha1, user_id, label_0, label_1) -> str:
    return hashlib.sha1(json.dumps([caption, sha0, sha1, user_id, label_0, label_1]).encode()).hexdigest()


def _best_uid_consistent(label_0, label_1, best, uid_0, uid_1) -> bool:
    labels = (label_0, label_1)
    if labels == (1.0, 0.0):
        return best == uid_0
    if labels == (0.0, 1.0):
        return best == uid_1
    if labels == (0.5, 0.5):
        return best in ("", None)
    return True  # invalid labels are reported by their own expectations


def validation_frame(table: pa.Table, shard: str, seen: dict[str, str], settings: IngestSettings):
    """The frame GX validates: one row per input row, derived columns included. ``seen`` maps row
    keys of every earlier row (all shards so far) to where they were first met; it is updated."""
    import pandas as pd

    col = lambda name: table.column(name).to_pylist() if name in table.column_names else [None] * len(table)  # noqa: E731
    captions, l0, l1 = col("caption"), col("label_0"), col("label_1")
    uid0, uid1, best, users, different = col("image_0_uid"), col("image_1_uid"), col("best_image_uid"), col("user_id"), col("are_different")
    jpg0, jpg1 = col("jpg_0"), col("jpg_1")
    frame: dict[str, list] = {k: [] for k in (
        "jpg_0_width", "jpg_0_height", "jpg_0_error", "jpg_1_width", "jpg_1_height", "jpg_1_error",
        "identical_images", "is_tie", "best_uid_consistent", "duplicate_of", "row_key")}
    for i in range(len(table)):
        for k, data in ((0, jpg0[i]), (1, jpg1[i])):
            info = inspect_image(data, settings.max_image_side, settings.min_image_side)
            frame[f"jpg_{k}_width"].append(info.width)
            frame[f"jpg_{k}_height"].append(info.height)
            frame[f"jpg_{k}_error"].append(info.error)
        sha0, sha1 = _sha(jpg0[i]), _sha(jpg1[i])
        frame["identical_images"].append(different[i] is False or (bool(jpg0[i]) and sha0 == sha1))
        frame["is_tie"].append(l0[i] == 0.5 and l1[i] == 0.5)
        frame["best_uid_consistent"].append(_best_uid_consistent(l0[i], l1[i], best[i], uid0[i], uid1[i]))
        key = _row_key(captions[i], sha0, sha1, users[i], l0[i], l1[i])
        frame["duplicate_of"].append(seen.get(key))
        seen.setdefault(key, f"{shard} row {i}")
        frame["row_key"].append(key)
    base = {"caption": captions, "label_0": l0, "label_1": l1, "has_label": col("has_label"),
            "image_0_uid": uid0, "image_1_uid": uid1}
    return pd.DataFrame(base | frame)


# --------------------------------------------------------------------------- Great Expectations


@functools.lru_cache(maxsize=4)
def _suite_and_batch(suite_text: str):
    """One ephemeral GX context per suite and process (a context creates a temporary docs site)."""
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch_definition = (
        context.data_sources.add_pandas("pickapic_v2")
        .add_dataframe_asset("shard")
        .add_batch_definition_whole_dataframe("whole_shard")
    )
    suite_json = json.loads(suite_text)
    suite = context.suites.add(gx.ExpectationSuite(
        name=suite_json["name"],
        expectations=[ExpectationConfiguration(**{k: e[k] for k in ("type", "kwargs", "meta")}).to_domain_obj()
                      for e in suite_json["expectations"]],
    ))
    return suite, batch_definition


def run_expectations(frame, settings: IngestSettings) -> tuple[list[dict], list[list[tuple[str, str]]]]:
    """Validate ``frame`` with the suite. Returns a summary per expectation and, per row, the
    (action, reason) pairs of the expectations it failed."""
    suite, batch_definition = _suite_and_batch(json.dumps(settings.suite, sort_keys=True))
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite,
        result_format={"result_format": "COMPLETE"},
        expectation_parameters={"max_image_side": settings.max_image_side,
                                "min_image_side": settings.min_image_side},
    )
    per_row: list[list[tuple[str, str]]] = [[] for _ in range(len(frame))]
    summary = []
    for r in result.results:
        config = r.expectation_config
        meta = config.meta or {}
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise DataValidationError(f"expectation {config.type} could not run: {r.exception_info}")
        failing = list(r.result.get("unexpected_index_list") or [])
        summary.append({"expectation": config.type, "column": config.kwargs.get("column") or config.kwargs.get("column_list"),
                        "action": meta.get("action"), "success": bool(r.success),
                        "unexpected_count": len(failing), "element_count": int(r.result.get("element_count", len(frame))),
                        "first_rows": failing[:20]})
        detail = meta.get("detail_column")
        for row in failing:
            reason = meta["reason"] + (f": {frame.at[row, detail]}" if detail else "")
            per_row[row].append((meta["action"], reason))
    return summary, per_row


# --------------------------------------------------------------------------- one shard


def shard_fingerprint(path: Path, settings: IngestSettings, previous: str) -> str:
    stat = path.stat()  # the file by name, size and modification time (hashing every raw byte each run would cost minutes)
    return digest(path.name, stat.st_size, stat.st_mtime_ns, settings.fingerprint(), previous)


def _classify(per_row, drop_ties: bool) -> list[tuple[str, str | None]]:
    out = []
    for failures in per_row:
        quarantine = [reason for action, reason in failures if action == "quarantine"]
        actions = {action for action, _ in failures}
        if quarantine:
            out.append(("quarantined", "; ".join(quarantine)))
        elif "drop_identical" in actions:
            out.append(("dropped_identical", None))
        elif "drop_tie" in actions and drop_ties:
            out.append(("dropped_ties", None))
        else:
            out.append(("valid", None))
    return out


def _canonical(table: pa.Table) -> pa.Table:
    """The rows as they are, in the canonical column order and types (absent optional columns
    become nulls; columns outside the schema are not carried)."""
    columns = {}
    for f in PICKAPIC_V2_SCHEMA:
        columns[f.name] = table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
    return pa.table(columns, schema=PICKAPIC_V2_SCHEMA)


def _load_done(done: Path, fingerprint: str) -> dict | None:
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    for name, checksum in record["checksums"].items():
        path = done.parent / name
        if not path.is_file() or file_sha256(path) != checksum:
            log.warning("%s: cached output %s is missing or corrupt; re-validating the shard", done.name, name)
            return None
    return record


def _reused(work_dir: Path, files: dict, record: dict, seen: dict[str, str], stored_uids: set[str]) -> None:
    """Carry a reused shard's row keys and stored images into the run's running state."""
    keys = pq.read_table(work_dir / files["keys"])
    for key, ref in zip(keys.column("row_key").to_pylist(), keys.column("first_seen").to_pylist(), strict=True):
        seen.setdefault(key, ref)
    stored_uids.update(pq.read_table(work_dir / files["images"], columns=["image_uid"]).column("image_uid").to_pylist())


def _output_tables(table: pa.Table, frame, classes, shard: str, seen: dict[str, str],
                   stored_uids: set[str]) -> dict[str, pa.Table]:
    """The shard's pairs, images (each uid once, byte for byte: never re-encoded), quarantined
    rows (with reason, source shard and row) and row keys."""
    stem = Path(shard).stem
    keep = [i for i, (c, _) in enumerate(classes) if c == "valid"]
    q_rows = [i for i, (c, _) in enumerate(classes) if c == "quarantined"]
    canonical = _canonical(table)
    quarantine = canonical.take(pa.array(q_rows, pa.int64()))
    for name, values, kind in (("reason", [classes[i][1] for i in q_rows], pa.string()),
                               ("source_shard", [shard] * len(q_rows), pa.string()), ("source_row", q_rows, pa.int64())):
        quarantine = quarantine.append_column(name, pa.array(values, kind))
    kept = canonical.take(pa.array(keep, pa.int64()))
    # The pipeline's image uid is its bytes' (keys.content_uid): a re-encoded or replaced image is a
    # new image to every cache downstream, even under the source's uid, which is kept beside it.
    uids = {k: [content_uid(b) for b in kept.column(f"jpg_{k}").to_pylist()] for k in (0, 1)}
    pairs = pa.table({
        "pair_id": [f"{stem}:{i}" for i in keep],
        "caption": kept.column("caption"),
        "image_0_uid": pa.array(uids[0], pa.string()), "image_1_uid": pa.array(uids[1], pa.string()),
        **{c: kept.column(c) for c in ("label_0", "label_1")},
        "is_tie": pa.array([bool(frame.at[i, "is_tie"]) for i in keep], pa.bool_()),
        **{c: kept.column(c) for c in ("user_id", "ranking_id")},
        "row_key": pa.array([frame.at[i, "row_key"] for i in keep], pa.string()),
        "source_shard": pa.array([shard] * len(keep), pa.string()),
        "source_row": pa.array(keep, pa.int64()),
        "image_0_source_uid": kept.column("image_0_uid"), "image_1_source_uid": kept.column("image_1_uid"),
    })
    image_rows: dict[str, list] = {"image_uid": [], "jpg": [], "width": [], "height": []}
    for row, i in enumerate(keep):
        for k in (0, 1):
            uid = uids[k][row]
            if uid in stored_uids:
                continue
            stored_uids.add(uid)
            image_rows["image_uid"].append(uid)
            image_rows["jpg"].append(canonical.column(f"jpg_{k}")[i].as_py())
            image_rows["width"].append(int(frame.at[i, f"jpg_{k}_width"]))
            image_rows["height"].append(int(frame.at[i, f"jpg_{k}_height"]))
    images = pa.table(image_rows, schema=pa.schema([("image_uid", pa.string()), ("jpg", pa.binary()),
                                                      ("width", pa.int32()), ("height", pa.int32())]))
    keys = pa.table({"row_key": frame["row_key"].tolist(), "first_seen": [seen[k] for k in frame["row_key"]]})
    return {"pairs": pairs, "images": images, "quarantine": quarantine, "keys": keys}


def validate_shard(path: Path, work_dir: Path, settings: IngestSettings, seen: dict[str, str],
                   stored_uids: set[str], previous_fingerprint: str) -> ShardResult:
    """Validate one shard (or reuse its intact outputs), updating ``seen`` and ``stored_uids``."""
    shard, stem = path.name, path.stem
    fingerprint = shard_fingerprint(path, settings, previous_fingerprint)
    done = work_dir / f"{stem}.done.json"
    files = {kind: f"{stem}.{kind}.parquet" for kind in ("pairs", "images", "quarantine", "keys")}
    files["gx"] = f"{stem}.gx.json"
    record = _load_done(done, fingerprint)
    if record is not None:
        _reused(work_dir, files, record, seen, stored_uids)
        return ShardResult(shard, record["input_rows"], record["counts"], record["reasons"], record["expectations"],
                           files, reused=True, fingerprint=fingerprint)

    check_schema(read_schema(path), path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # re-raised with the file named
        raise DataValidationError(f"{path}: not a readable parquet file ({exc})") from exc
    frame = validation_frame(table, shard, seen, settings)
    expectations, per_row = run_expectations(frame, settings)
    classes = _classify(per_row, settings.drop_ties)
    counts = Counter(c for c, _ in classes)
    reasons = Counter(r for c, reason in classes if reason for r in reason.split("; "))

    work_dir.mkdir(parents=True, exist_ok=True)
    for kind, data in _output_tables(table, frame, classes, shard, seen, stored_uids).items():
        pq.write_table(data, work_dir / files[kind])
    (work_dir / files["gx"]).write_text(json.dumps({"shard": shard, "expectations": expectations}, indent=1))
    result_counts = {c: counts[c] for c in ("valid", "dropped_ties", "dropped_identical", "quarantined")}
    record = {
        "shard": shard, "fingerprint": fingerprint, "input_rows": len(table), "counts": result_counts,
        "reasons": dict(reasons), "expectations": expectations,
        "checksums": {name: file_sha256(work_dir / name) for name in files.values()},
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(done)  # the commit point of this shard
    return ShardResult(shard, len(table), result_counts, dict(reasons), expectations, files, fingerprint=fingerprint)


def list_shards(raw_dir: Path) -> tuple[list[Path], list[Path]]:
    """(parquet shards, other files) under ``raw_dir``, sorted; hidden files are skipped."""
    if not raw_dir.is_dir():
        raise DataValidationError(f"raw shard directory {raw_dir} does not exist")
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    shards = [p for p in files if p.suffix == ".parquet"]
    if not shards:
        raise DataValidationError(f"{raw_dir} holds no .parquet shard")
    return shards, [p for p in files if p.suffix != ".parquet"]


def validate_shards(raw_dir: Path, work_dir: Path, settings: IngestSettings, progress: bool = True) -> Iterator[ShardResult]:
    """Validate every shard in order, one at a time (yielding each result as it is done)."""
    from tqdm.auto import tqdm

    shards, _ = list_shards(raw_dir)
    seen: dict[str, str] = {}
    stored_uids: set[str] = set()
    previous = ""
    for path in tqdm(shards, desc="validating shards", unit="shard", disable=not progress):
        result = validate_shard(path, work_dir, settings, seen, stored_uids, previous)
        previous = result.fingerprint
        yield result


def caption_split(caption: str, validation_share: float) -> str:
    """'validation' or 'train' from a hash of the caption: every row of a caption lands on one side."""
    bucket = int.from_bytes(hashlib.sha256(caption.encode("utf-8")).digest()[:8], "big") / 2**64
    return "validation" if bucket < validation_share else "train"


def summarise(results: list[ShardResult], ignored: list[Path]) -> dict[str, Any]:
    totals = Counter()
    reasons = Counter()
    expectations: dict[tuple, dict] = {}
    for r in results:
        totals.update(r.counts)
        totals["input_rows"] += r.input_rows
        reasons.update(r.reasons)
        for e in r.expectations:
            key = (e["expectation"], json.dumps(e["column"]))
            agg = expectations.setdefault(key, {k: e[k] for k in ("expectation", "column", "action")} | {"unexpected_count": 0})
            agg["unexpected_count"] += e["unexpected_count"]
    return {
        "input_rows": totals["input_rows"],
        "valid": totals["valid"],
        "dropped_ties": totals["dropped_ties"],
        "dropped_identical": totals["dropped_identical"],
        "quarantined": totals["quarantined"],
        "quarantine_reasons": dict(reasons.most_common()),
        "expectations": list(expectations.values()),
        "shards": [{"shard": r.shard, "input_rows": r.input_rows, "reused": r.reused} | r.counts for r in results],
        "ignored_files": [str(p) for p in ignored],
    }
