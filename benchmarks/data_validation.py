"""Throughput and peak memory of shard validation (the ``data`` pipeline's core).

Writes N synthetic Pick-a-Pic v2 shards of embedded-world images (or copies of the bootstrap's
shards, if present, cycled), then validates 1 shard and 8 shards, each in a fresh process, and
prints rows/s and peak resident memory. Memory must not grow with the number of shards: shards are
read, validated and written one at a time.

    .venv/bin/python benchmarks/data_validation.py [--rows-per-shard 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_shards(directory: Path, n: int, rows_per_shard: int) -> None:
    from datetime import datetime

    import numpy as np
    import pyarrow.parquet as pq

    from smpo_pipeline.pickapic import PICKAPIC_V2_SCHEMA, jpeg_bytes, to_table
    from smpo_pipeline.world.grammar import all_compositions
    from smpo_pipeline.world.render import render

    rng = np.random.default_rng(0)
    comps = all_compositions()
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        rows = {f.name: [] for f in PICKAPIC_V2_SCHEMA}
        for i in range(rows_per_shard):
            comp = comps[int(rng.integers(len(comps)))]
            uid = f"{s}-{i}"
            values = {
                "are_different": True, "best_image_uid": f"{uid}-0", "caption": comp.prompt,
                "created_at": datetime(2023, 5, 1), "has_label": True,
                "image_0_uid": f"{uid}-0", "image_0_url": "", "image_1_uid": f"{uid}-1", "image_1_url": "",
                "jpg_0": jpeg_bytes(render(comp, rng=rng)), "jpg_1": jpeg_bytes(render(comp, rng=rng)),
                "label_0": 1.0, "label_1": 0.0, "model_0": "render", "model_1": "render",
                "ranking_id": s * rows_per_shard + i, "user_id": i % 40, "num_example_per_prompt": 1,
                "__index_level_0__": i,
            }
            for k, v in values.items():
                rows[k].append(v)
        pq.write_table(to_table(rows), directory / f"shard-{s:05d}.parquet")


def child(raw: str, work: str) -> None:
    from smpo_pipeline.ingest.shards import IngestSettings, validate_shards

    suite = json.loads((ROOT / "conf/base/expectations/pickapic_v2.json").read_text())
    settings = IngestSettings(4096, 8, True, suite)
    start = time.perf_counter()
    rows = sum(r.input_rows for r in validate_shards(Path(raw), Path(work), settings, progress=False))
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def measure(raw: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(raw), str(work)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-shard", type=int, default=256)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "raw8", 8, args.rows_per_shard)
        (tmp / "raw1").mkdir()
        (tmp / "raw1" / "shard-00000.parquet").write_bytes((tmp / "raw8" / "shard-00000.parquet").read_bytes())
        shard_mb = (tmp / "raw1" / "shard-00000.parquet").stat().st_size / 2**20
        results = {n: measure(tmp / f"raw{n}", tmp / f"work{n}") for n in (1, 8)}
        rerun = measure(tmp / "raw8", tmp / "work8")  # unchanged input: every shard reused

    print(f"shard: {args.rows_per_shard} rows, {shard_mb:.2f} MiB (32 px JPEG pairs)")
    print(f"{'shards':>6} {'rows':>6} {'seconds':>8} {'rows/s':>8} {'peak RSS MiB':>13}")
    for n, r in results.items():
        print(f"{n:>6} {r['rows']:>6} {r['seconds']:>8.2f} {r['rows'] / r['seconds']:>8.0f} {r['peak_mb']:>13.0f}")
    marginal = (results[8]["rows"] - results[1]["rows"]) / (results[8]["seconds"] - results[1]["seconds"])
    print(f"steady-state throughput (shards 2-8, start-up excluded): {marginal:.0f} rows/s")
    print(f"peak memory, 8 shards / 1 shard: {results[8]['peak_mb'] / results[1]['peak_mb']:.2f}×")
    print(f"re-run on unchanged input (8 shards reused): {rerun['seconds']:.2f} s "
          f"({results[8]['seconds'] / rerun['seconds']:.0f}× faster than validating)")


if __name__ == "__main__":
    main()
