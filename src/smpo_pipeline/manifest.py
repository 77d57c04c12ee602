"""A manifest of shipped files: path → (bytes, sha256), so a clone can check that its raw inputs are
exactly the ones the bootstrap wrote (and that nothing was added, lost or altered since)."""

from __future__ import annotations

from pathlib import Path

from smpo_pipeline.keys import file_sha256

MANIFEST_NAME = "MANIFEST.json"
_IGNORED = {MANIFEST_NAME, ".gitkeep"}


def build_manifest(root: str | Path) -> dict[str, dict]:
    """Every file under ``root`` (but the manifest itself and ``.gitkeep``), by relative POSIX path."""
    root = Path(root)
    return {path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(root.rglob("*")) if path.is_file() and path.name not in _IGNORED}


def manifest_problems(root: str | Path, manifest: dict[str, dict]) -> list[str]:
    """What differs between ``root`` and ``manifest``: missing, altered and unlisted files, each named."""
    found = build_manifest(root)
    problems = [f"{name}: listed in {MANIFEST_NAME} but missing" for name in sorted(set(manifest) - set(found))]
    problems += [f"{name}: not listed in {MANIFEST_NAME}" for name in sorted(set(found) - set(manifest))]
    problems += [f"{name}: sha256 {found[name]['sha256'][:12]}… differs from the manifest's "
                 f"{manifest[name]['sha256'][:12]}…" for name in sorted(set(found) & set(manifest))
                 if found[name] != manifest[name]]
    return problems
