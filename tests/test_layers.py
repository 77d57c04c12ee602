"""The package's rooms and the arrows between them: imports run only downwards through the layers
below (imports inside functions count), no pipeline imports another, and no module is on an
import cycle. docs/development.md draws the same layers."""

from __future__ import annotations

from pathlib import Path

from tests.import_graph import SRC, imports, module_file

# Highest first. A unit may import its own modules and any unit of a lower layer, never a higher one.
LAYERS = [
    {"__main__", "settings"},  # the CLI and Kedro's settings
    {"pipeline_registry", "hooks"},  # Kedro's wiring; the hooks set the project's environment
    {"pipelines"},  # nodes: thin adapters, one folder per pipeline
    {"datasets"},  # Kedro datasets for the project's artefacts
    {"study"},  # the disagreement study's grid: reward models, pair tables and runs per level
    {"evaluation", "rewards"},  # evaluation; reward models (the learned one trains with training's checkpoints)
    {"training"},  # the loops: pretraining, preference training, the cache, checkpoints
    {"params"},  # the validated parameters
    {"ingest", "models", "world", "smoothing", "objectives", "inversion", "runtime"},  # the core's pure pieces
    {"manifest", "pickapic"},  # the shipped files' manifest, the Pick-a-Pic schema
    {"keys"},  # how reused work is keyed: digests of content and settings
]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        graph[name] = {_module_name(module_file(n)) for n in imports(path)} - {name}
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(module: str) -> int:
    unit = _unit(module)
    found = [i for i, layer in enumerate(LAYERS) if unit in layer]
    assert found, f"{module}: its unit {unit!r} is in no layer of tests/test_layers.py (add it where it belongs)"
    return found[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _unit(a) != _unit(b) and _unit(b) != "smpo_pipeline" and _layer(b) <= _layer(a))


def test_imports_run_only_downwards():
    upward = _upward(_graph())
    assert not upward, "imports that run sideways or upwards:\n" + "\n".join(upward)


def test_no_pipeline_imports_another():
    crossing = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                if _unit(a) == "pipelines" == _unit(b) and a.split(".")[2:3] != b.split(".")[2:3]
                and len(b.split(".")) > 2]
    assert not crossing, "\n".join(sorted(crossing))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_check_would_catch_an_upward_import():
    """The check is not vacuous: a core module importing a node module, or two core units
    importing each other sideways, is reported."""
    assert _upward({"smpo_pipeline.world.probe": {"smpo_pipeline.pipelines.train.nodes"}}) \
        == ["smpo_pipeline.world.probe -> smpo_pipeline.pipelines.train.nodes"]
    assert _upward({"smpo_pipeline.models.probe": {"smpo_pipeline.world.render"}}) != []
    assert _upward({"smpo_pipeline.training.probe": {"smpo_pipeline.models.sampling"}}) == []


def test_no_function_in_the_package_is_longer_than_60_lines():
    import ast

    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SRC.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long, "functions a reader cannot hold in their head:\n" + "\n".join(long)
