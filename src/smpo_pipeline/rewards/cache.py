"""On-disk reward scores, keyed by (image uid, caption, reward-model id).

Scores are appended batch by batch as small parquet parts (written to a temporary name, then
renamed), so a run killed at any point keeps every finished batch and a re-run scores only what is
missing. A part that cannot be read is set aside and its images are scored again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def caption_key(caption: str) -> str:
    from smpo_pipeline.keys import digest

    return digest(caption, length=16)


class ScoreCache:
    """Scores of one reward model (``model_id``: its weights) computed by the scoring code as it is
    now (``keys.code_digest`` of ``rewards.models``): new weights or new code, a new directory."""

    def __init__(self, directory: Path, model_id: str) -> None:
        from smpo_pipeline.keys import code_digest

        self.directory = Path(directory) / f"{model_id}-code-{code_digest('smpo_pipeline.rewards.models', 8)}"
        self.directory.mkdir(parents=True, exist_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def load(self) -> dict[tuple[str, str], float]:
        import pyarrow.parquet as pq

        scores: dict[tuple[str, str], float] = {}
        for part in self._parts():
            try:
                table = pq.read_table(part)
            except Exception as exc:  # noqa: BLE001 - any unreadable part is rebuilt
                log.warning("%s is unreadable (%s): set aside, its images will be scored again", part, exc)
                part.rename(part.with_suffix(".corrupt"))
                continue
            for uid, key, score in zip(*(table.column(c).to_pylist() for c in ("image_uid", "caption_key", "score")), strict=True):
                scores[uid, key] = score
        return scores

    def append(self, uids: list[str], captions: list[str], scores: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self._parts()
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        table = pa.table({"image_uid": uids, "caption_key": [caption_key(c) for c in captions],
                          "score": pa.array(scores, pa.float64())})
        tmp = self.directory / f".part-{index:06d}.tmp"
        pq.write_table(table, tmp)
        tmp.rename(self.directory / f"part-{index:06d}.parquet")

    def missing(self, items: Iterable[tuple]) -> tuple[list[tuple], dict[tuple[str, str], float]]:
        """(the items = (uid, caption, ...) without a score here, every score held)."""
        done = self.load()
        return [it for it in items if (it[0], caption_key(it[1])) not in done], done

    def score(self, items: list[tuple], images: Callable[[list[tuple]], list], model, batch_size: int,
              bar=None, on_batch: Callable[[], None] | None = None) -> dict[tuple[str, str], float]:
        """Score ``items`` = (uid, caption, ...) a batch at a time (``images(batch)``: their PIL
        images), appending every batch as it is scored; returns the new scores by (uid, caption key)."""
        new = {}
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            scores = model.score(images(batch), [it[1] for it in batch])
            self.append([it[0] for it in batch], [it[1] for it in batch], scores)
            new.update({(it[0], caption_key(it[1])): float(v) for it, v in zip(batch, scores, strict=True)})
            if bar is not None:
                bar.update(len(batch))
            if on_batch:
                on_batch()
        return new


def score_missing(
    requests: Iterable[tuple[str, str, str]],
    images_dir: Path,
    model,
    cache: ScoreCache,
    batch_size: int,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Score every (image_uid, caption, image_file) not yet in ``cache``, reading image bytes one
    image file (one shard) at a time. Returns counts of cached and newly scored images."""
    from tqdm.auto import tqdm

    from smpo_pipeline.ingest.images import decode_rgb, images_by_uid

    requests = list(requests)
    todo, _ = cache.missing(requests)
    by_file: dict[str, list[tuple[str, str, str]]] = {}
    for item in todo:
        by_file.setdefault(item[2], []).append(item)
    bar = tqdm(total=len(todo), desc=f"scoring with {model.name}", unit="img", disable=not progress)
    batches = 0

    def count() -> None:
        nonlocal batches
        batches += 1
        if on_batch:
            on_batch(batches)

    for image_file, items in by_file.items():
        data = images_by_uid({image_file: {uid for uid, _, _ in items}}, images_dir)  # one shard in memory at a time
        cache.score(items, lambda batch, data=data: [decode_rgb(data[uid]) for uid, _, _ in batch], model, batch_size,
                    bar, count)
    bar.close()
    return {"images": len(requests), "from_cache": len(requests) - len(todo), "scored": len(todo)}


def score_files(
    items: list[tuple[str, str, Path]],
    model,
    cache: ScoreCache,
    batch_size: int,
    desc: str = "scoring",
) -> tuple[np.ndarray, int]:
    """The score of every (uid, caption, image path), in order: read from ``cache`` where it holds
    one, else scored a batch at a time and appended, so an interrupted run keeps what it scored.
    Returns the scores and how many were scored now."""
    from PIL import Image
    from tqdm.auto import tqdm

    todo, done = cache.missing(items)
    with tqdm(total=len(todo), desc=desc, unit="img", mininterval=2) as bar:
        done |= cache.score(todo, lambda batch: [Image.open(path).convert("RGB") for _, _, path in batch], model,
                            batch_size, bar)
    return np.array([done[uid, caption_key(caption)] for uid, caption, _ in items], dtype=float), len(todo)
