"""How the project keys reused work: every cache, checkpoint run, score and trial gets its key here.

A key is a digest of the *content* of everything the artefact depends on (file bytes, tensor bytes,
the values a run reads from a table) and of every setting that can change its value, serialised
the same way everywhere (``digest``). Callers pass the values themselves, never a hand-kept list
of names beside the code that reads them.
"""

from __future__ import annotations

import ast
import functools
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


def _update_with_tensor(h, label: str, tensor) -> None:
    """Feed a tensor's label, dtype, shape and bytes to the hash ``h`` (0-d tensors too)."""
    import torch

    h.update(f"{label}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
    h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_digest(*tensors, length: int = 64) -> str:
    """sha256 over the bytes (and shapes and dtypes) of tensors: what a run preprocessed from its data."""
    h = hashlib.sha256()
    for i, tensor in enumerate(tensors):
        _update_with_tensor(h, str(i), tensor)
    return h.hexdigest()[:length]


def tokenizer_fingerprint(*tokenizers) -> str:
    """What a tokenizer maps text to: its vocabulary, its merges (BPE) and its length and special
    tokens. Two tokenizers with the same fingerprint turn every caption into the same ids."""
    return digest([{"class": type(t).__name__, "vocab": sorted(t.get_vocab().items()),
                    "merges": sorted(map(str, getattr(t, "bpe_ranks", {}).items())),
                    "max_length": t.model_max_length, "special": t.special_tokens_map} for t in tokenizers], length=16)


def module_fingerprint(module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        _update_with_tensor(h, name, tensor)
    return h.hexdigest()[:16]


def run_description(config, prints, pairs, columns, **more) -> dict:
    """Everything a training run depends on, by name: every setting of ``config`` (a dataclass),
    the weights it starts from and reads through the cache (``prints``: UNet, VAE, text encoders),
    a digest of each column it reads from ``pairs`` (a new τ changes ``p``, a new order or reward
    model the winners), the code of the training loop and all it imports (``code_digest``), and
    ``more`` (e.g. the inversion settings of cached trajectories). Its
    digest is the run's key; kept beside the checkpoints, it says what a new run changed."""
    from dataclasses import asdict

    return {"settings": asdict(config), "weights": {"unet": prints.unet, "vae": prints.vae, "text_encoders": prints.text},
            "pairs": {column: frame_digest(pairs, [column]) for column in columns} | {"rows": len(pairs)},
            "code": code_digest("smpo_pipeline.training.trainer"), **more}


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


PACKAGE_ROOT = Path(__file__).resolve().parent


def _module_source(name: str) -> Path | None:
    """The source file of a project module, found without importing it (None: not a module)."""
    base = PACKAGE_ROOT.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _code_of(path: Path) -> tuple[str, set[str]]:
    """A module's code without its comments and docstrings (``ast.dump``), and the project modules
    it imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()  # a docstring: its wording changes no result
    return ast.dump(tree), {n for n in imports if n.startswith("smpo_pipeline")}


@functools.cache
def code_digest(module: str, length: int = 12) -> str:
    """A digest of the code of ``module`` and of every project module it imports, transitively
    (comments and docstrings left out). Part of the key of work that code computes, so a changed
    loss, sampler or encoder never reuses what the old code made: the modules are found from the
    imports, not listed by hand."""
    seen, todo, parts = set(), [module], []
    while todo:
        name = todo.pop()
        path = _module_source(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        code, imports = _code_of(path)
        parts.append((str(path.relative_to(PACKAGE_ROOT)), code))
        todo += sorted(imports)
    return digest(sorted(parts), length=length)


def train_pairs_digest(clean_pairs) -> str:
    """A digest of the train split of the clean pairs (which images, caption and label): recorded
    with a learned reward model, so that the ``rewards`` stage can refuse one trained on other pairs."""
    train = clean_pairs[clean_pairs.split == "train"]
    return frame_digest(train, ("image_0_uid", "image_1_uid", "caption", "label_0"))[:16]
