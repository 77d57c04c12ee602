"""Builds small Pick-a-Pic v2 shards for tests: valid rows from the shapes renderer, and every kind
of broken row real shards contain."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA, jpeg_bytes
from smpo_pipeline.world.grammar import all_compositions
from smpo_pipeline.world.render import render


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` but holds no pixels: a decompression-bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def valid_rows(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    comps = all_compositions()
    rows = []
    for i in range(start, start + n):
        comp = comps[int(rng.integers(len(comps)))]
        jpg0, jpg1 = (jpeg_bytes(render(comp, rng=rng)) for _ in range(2))
        first = i % 2 == 0
        uid0, uid1 = f"img-{seed}-{i}-0", f"img-{seed}-{i}-1"
        rows.append({
            "are_different": True, "best_image_uid": uid0 if first else uid1, "caption": comp.prompt,
            "created_at": datetime(2023, 5, 1), "has_label": True,
            "image_0_uid": uid0, "image_0_url": "", "image_1_uid": uid1, "image_1_url": "",
            "jpg_0": jpg0, "jpg_1": jpg1, "label_0": 1.0 if first else 0.0, "label_1": 0.0 if first else 1.0,
            "model_0": "render", "model_1": "render", "ranking_id": i, "user_id": 7 + i % 3,
            "num_example_per_prompt": 1, "__index_level_0__": i,
        })
    return rows


def write_shard(path: Path, rows: list[dict], schema: pa.Schema = PICKAPIC_V2_SCHEMA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def annotated_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs of a prompt's render and the render of a prompt one attribute away, labelled by the
    simulated annotators: the oracle should agree with most labels, not all."""
    import dataclasses

    from smpo_pipeline.world import grammar
    from smpo_pipeline.world.annotators import TIE, AnnotatorPopulation
    from smpo_pipeline.world.grammar import Composition
    from smpo_pipeline.world.oracle import read_image

    rng = np.random.default_rng(seed)
    population = AnnotatorPopulation(size=20, seed=seed)
    choices = {"size": grammar.SIZES, "color": tuple(grammar.COLORS), "shape": grammar.SHAPES, "position": grammar.POSITIONS}
    rows = valid_rows(n, seed=seed)
    comps = all_compositions()
    for row in rows:
        comp = comps[int(rng.integers(len(comps)))]
        attribute = str(rng.choice(list(choices)))
        value = str(rng.choice([v for v in choices[attribute] if v != getattr(comp, attribute)]))
        try:
            other = dataclasses.replace(comp, **{attribute: value})
        except ValueError:  # colour equal to the background: change the size instead
            other = dataclasses.replace(comp, size="small" if comp.size == "large" else "large")
        assert isinstance(other, Composition)
        images = [render(comp, rng=rng), render(other, rng=rng)]
        if rng.random() < 0.5:
            images.reverse()
        label = population.draw(rng).choose(read_image(images[0]), read_image(images[1]), comp, rng)
        row.update(caption=comp.prompt, jpg_0=jpeg_bytes(images[0]), jpg_1=jpeg_bytes(images[1]),
                   label_0=label[0], label_1=label[1],
                   best_image_uid="" if label == TIE else (row["image_0_uid"] if label[0] > label[1] else row["image_1_uid"]))
    return rows
