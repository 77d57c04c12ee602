"""Checksums of files on disk: what every cache of the project verifies before reuse."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def frame_digest(frame, columns) -> str:
    """sha256 of the values in ``columns`` of a DataFrame, row order included: what a run that
    reads those columns depends on (a changed label, probability or order changes it)."""
    import pandas as pd

    missing = [c for c in columns if c not in frame]
    if missing:
        raise KeyError(f"frame_digest: no columns {missing}")
    values = pd.util.hash_pandas_object(frame[list(columns)], index=False).to_numpy()
    return hashlib.sha256(values.tobytes()).hexdigest()
