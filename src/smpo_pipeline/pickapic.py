"""The Pick-a-Pic v2 parquet schema (``docs/data.md``), shared by the shards
the embedded world writes and the ingestion that reads real ones."""

from __future__ import annotations

import io

import pyarrow as pa

PICKAPIC_V2_SCHEMA = pa.schema(
    [
        ("are_different", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("has_label", pa.bool_()),
        ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()),
        ("__index_level_0__", pa.int64()),
    ]
)


def jpeg_bytes(image, quality: int = 95) -> bytes:
    """Encode a PIL image as JPEG bytes, as Pick-a-Pic stores them."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def to_table(rows: dict[str, list]) -> pa.Table:
    """Columns → a table in exactly the Pick-a-Pic v2 schema (column order and types)."""
    missing = set(PICKAPIC_V2_SCHEMA.names) - set(rows)
    if missing:
        raise KeyError(f"rows lack Pick-a-Pic v2 columns: {sorted(missing)}")
    return pa.table({name: rows[name] for name in PICKAPIC_V2_SCHEMA.names}, schema=PICKAPIC_V2_SCHEMA)
