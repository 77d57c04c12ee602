"""How the project keys reused work: every cache, checkpoint run, score and trial gets its key here.

A key is a digest of the *content* of everything the artefact depends on (file bytes, tensor bytes,
the values a run reads from a table) and of every setting that can change its value, serialised
the same way everywhere (``digest``). Callers pass the values themselves, never a hand-kept list
of names beside the code that reads them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

CONTENT_NAMESPACE = uuid.UUID(int=0)


def digest(*parts, length: int = 64) -> str:
    """sha256 of ``parts`` as canonical JSON (sorted keys; dataclasses and paths as ``str``)."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def content_uid(data: bytes, namespace: uuid.UUID = CONTENT_NAMESPACE) -> str:
    """An image's uid, derived from its bytes. Every stage after ``data`` keys its work on an image
    (reward scores, latents, trajectories) by this uid, so changed bytes are a new image whatever
    uid their source gave them, and the same bytes are one image."""
    return str(uuid.uuid5(namespace, hashlib.sha256(data).hexdigest()))


def key(kind: str, *parts, length: int = 32) -> str:
    """``<kind>/<digest of parts>``: a cache entry's name."""
    return f"{kind}/" + digest(*parts, length=length)


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


def module_fingerprint(module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d too
    return h.hexdigest()[:16]


def run_description(config, prints, pairs, columns, **more) -> dict:
    """Everything a training run depends on, by name: every setting of ``config`` (a dataclass),
    the weights it starts from and reads through the cache (``prints``: UNet, VAE, text encoders),
    a digest of each column it reads from ``pairs`` (a new τ changes ``p``, a new order or reward
    model the winners), and ``more`` (e.g. the inversion settings of cached trajectories). Its
    digest is the run's key; kept beside the checkpoints, it says what a new run changed."""
    from dataclasses import asdict

    return {"settings": asdict(config), "weights": {"unet": prints.unet, "vae": prints.vae, "text_encoders": prints.text},
            "pairs": {column: frame_digest(pairs, [column]) for column in columns} | {"rows": len(pairs)}, **more}


def run_key(description: dict) -> str:
    """A training run's key (its checkpoint directory's name)."""
    return digest(description, length=12)


def changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted names of the values that differ between two descriptions (nested dicts walked)."""
    names = []
    for name in sorted(set(old) | set(new), key=str):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            names += changed(a, b, f"{prefix}{name}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            names.append(f"{prefix}{name}")
    return names
