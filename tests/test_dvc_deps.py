"""dvc.yaml cannot drift from the code: every module a stage's nodes import (directly or through
other project modules, imports inside functions included), every project dataset class its catalog
entries use, and every parameter section its nodes read is declared in that stage's deps / params."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.import_graph import SRC, imports, module_file

DVC = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
CATALOG = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())


def _closure(start: list[Path]) -> set[Path]:
    seen, todo = set(), list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [module_file(name) for name in imports(path)]
        # A package's __init__ runs before any of its modules.
        for parent in path.relative_to(SRC).parents:
            init = SRC / parent / "__init__.py"
            if parent != Path(".") and init.is_file():
                todo.append(init)
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(PROJECT_ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def _pipeline(stage: str):
    import importlib

    return importlib.import_module(f"smpo_pipeline.pipelines.{stage}.pipeline").create_pipeline()


def _catalog_type(dataset: str) -> str | None:
    for pattern, entry in CATALOG.items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", ".+", pattern), dataset):
            return entry.get("type")
    return None


def _read_by(stage: str) -> set[Path]:
    """Every project module the stage's nodes and its catalog's project datasets import."""
    pipeline = _pipeline(stage)
    files = [SRC / "smpo_pipeline/pipelines" / stage / name for name in ("__init__.py", "nodes.py", "pipeline.py")]
    for dataset in pipeline.datasets():
        kind = _catalog_type(dataset) or ""
        if kind.startswith("smpo_pipeline."):
            files.append(module_file(kind.rsplit(".", 1)[0]))
    return _closure(files)


@pytest.mark.parametrize("stage", list(DVC))
def test_a_stage_declares_every_module_and_parameter_section_it_reads(stage):
    spec = DVC[stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    pipeline = _pipeline(stage)
    missing = sorted(str(p.relative_to(PROJECT_ROOT)) for p in _read_by(stage) if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} reads modules it does not declare in deps: {missing}"

    declared = {section for entry in spec.get("params", []) for sections in entry.values() for section in sections}
    read = {name.split(":", 1)[1].split(".")[0] for name in pipeline.inputs() if name.startswith("params:")}
    assert read <= declared, f"dvc.yaml stage {stage!r} reads parameter sections it does not declare: {sorted(read - declared)}"


@pytest.mark.parametrize("stage", list(DVC))
def test_every_declared_code_dependency_exists_and_is_read(stage):
    """No stale entry: a renamed or deleted module, or one the stage no longer reads, is not
    left in its deps (it would make DVC fail, or re-run the stage for nothing)."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in DVC[stage].get("deps", [])]
    read = _read_by(stage)
    code = [d for d in deps if d.startswith("src/")]
    assert all((PROJECT_ROOT / d).exists() for d in code), [d for d in code if not (PROJECT_ROOT / d).exists()]
    unread = [d for d in code if not any(_covered(path, [d]) for path in read)]
    assert not unread, f"dvc.yaml stage {stage!r} declares modules it does not read: {unread}"
