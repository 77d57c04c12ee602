"""Which attributes the shipped pairs differ in, and whom the annotators' labels follow there
(docs/regime.md, round 15).

Reads every pair of the Pick-a-Pic-format shards in ``data/01_raw/pickapic``, has the shapes-oracle
read both images, and prints, per attribute, the share of decided (non-tie) pairs in which exactly
one image has it right and the share of those whose label prefers that image. Says whether the
labels carry a signal about an attribute before any objective is asked to learn it (≈ 1 min).

    .venv/bin/python benchmarks/pair_signal.py
    .venv/bin/python benchmarks/pair_signal.py --shards DIR    # another set of shards
"""

from __future__ import annotations

import io
from pathlib import Path

SHARDS = Path("data/01_raw/pickapic")


def right_attributes(jpeg: bytes, caption: str) -> dict[str, bool]:
    from PIL import Image

    from smpo_pipeline.world.oracle import read_image

    return read_image(Image.open(io.BytesIO(jpeg)).convert("RGB")).right(caption)


def main() -> None:
    import argparse

    import pandas as pd
    from tqdm import tqdm

    from smpo_pipeline.world.oracle import ATTRIBUTES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=SHARDS, help=f"a directory of parquet shards (default {SHARDS})")
    shards = sorted(parser.parse_args().shards.glob("*.parquet"))
    if not shards:
        raise SystemExit("no *.parquet shards found")
    pairs = pd.concat([pd.read_parquet(f) for f in shards], ignore_index=True)
    decided = pairs[pairs.label_0 != 0.5]
    rows = []
    for rec in tqdm(decided.itertuples(index=False), total=len(decided), desc="oracle reads pairs"):
        r0, r1 = right_attributes(rec.jpg_0, rec.caption), right_attributes(rec.jpg_1, rec.caption)
        rows.append({"label_0": rec.label_0, **{a: int(r0[a]) - int(r1[a]) for a in ATTRIBUTES}})
    t = pd.DataFrame(rows)
    print(f"{len(pairs)} pairs, {len(t)} decided (not ties)\n")
    print(f"{'attribute':12s} {'one image right':>16s} {'label picks it':>15s}")
    for a in ATTRIBUTES:
        d = t[t[a] != 0]
        follows = ((d[a] > 0) == (d.label_0 == 1)).mean() if len(d) else float("nan")
        print(f"{a:12s} {len(d) / len(t):16.1%} {follows:15.1%}")
    others = [a for a in ATTRIBUTES if a != "position"]
    only = t[(t.position != 0) & (t[others] == 0).all(axis=1)]
    print(f"\nonly position differs: {len(only) / len(t):.1%} of decided pairs, "
          f"label picks the right one {((only.position > 0) == (only.label_0 == 1)).mean():.1%}")


if __name__ == "__main__":
    main()
