"""The embedded "shapes" world: a prompt grammar, an ideal renderer, a pixel-based reward
(``shapes-oracle``) and a population of simulated annotators.

Pure Python + numpy + PIL; no Kedro, no torch. Everything takes an explicit seed or
``numpy.random.Generator`` so the whole world is deterministic.
"""

from smpo_pipeline.world.annotators import Annotator, AnnotatorPopulation
from smpo_pipeline.world.grammar import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Composition,
    all_compositions,
    parse_prompt,
    split_compositions,
)
from smpo_pipeline.world.oracle import OracleReading, oracle_reward, read_image
from smpo_pipeline.world.render import render

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Annotator",
    "AnnotatorPopulation",
    "Composition",
    "OracleReading",
    "all_compositions",
    "oracle_reward",
    "parse_prompt",
    "read_image",
    "render",
    "split_compositions",
]
