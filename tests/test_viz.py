"""Kedro-Viz: `kedro viz build` writes the static site, and headless Chromium (Debian's `chromium`,
which .ci/run installs) renders the pipeline's nodes from it when served on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from smpo_pipeline.runtime import environment_without_process_group
from tests.conftest import make_kedro_project


@pytest.fixture(scope="module")
def viz_build(tmp_path_factory):
    project = make_kedro_project(tmp_path_factory.mktemp("viz") / "project")
    out = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=project, capture_output=True, text=True,
                         env=environment_without_process_group(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return project / "build"


def test_viz_build_holds_every_pipeline_with_layers(viz_build):
    assert (viz_build / "index.html").is_file()
    main = json.loads((viz_build / "api/main").read_text())
    names = {n["name"] for n in main["nodes"]}
    # api/main is the default pipeline: the chain from the shipped raw inputs (the bootstrap is its own).
    assert {"validate_raw_shards", "train_smpo", "train_dro", "summarize_evaluation", "measure_attributes"} <= names
    assert "split_prompt_sets" not in names
    # Layers are ordered along the flow (a dataset whose layer broke the order would empty this list).
    assert main["layers"][0] == "raw" and main["layers"][-1] == "reporting" and "models" in main["layers"]
    assert {p["id"] for p in main["pipelines"]} >= {"bootstrap", "data", "train", "evaluate", "tune"}


def test_headless_chromium_renders_the_pipeline_nodes(viz_build, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it)")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(viz_build))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=30000", "--window-size=1600,1000"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        shot = tmp_path / "kedro_viz.png"
        subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    finally:
        server.shutdown()
    # The flowchart renders one element per node, labelled with the node's (prettified) name.
    assert "pipeline-node" in dom, dom[:2000]
    assert "Train Smpo" in dom or "train_smpo" in dom
    assert shot.is_file() and shot.stat().st_size > 20_000
