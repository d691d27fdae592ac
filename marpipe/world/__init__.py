"""The "small world": a procedural compositional image world checkable on CPU, standing in for the
paper's text-to-image setting at 32x32: a prompt grammar (:mod:`~marpipe.world.prompts`), a
deterministic renderer (:mod:`~marpipe.world.render`), verifiable scorers
(:mod:`~marpipe.world.scorers`) and learned ones (:mod:`~marpipe.world.learned`). Images are float
tensors ``[B, 3, H, W]`` in ``[0, 1]``. What it shows: ``docs/results.md``."""
from marpipe.world.prompts import CATEGORIES, SPLITS, STYLES, make_split, prompt_text
from marpipe.world.render import (
                                   CANVAS,
                                   NEGATIVE_KINDS,
                                   corrupt,
                                   mismatch_metadata,
                                   render,
                                   render_negatives,
                                   render_one,
)

__all__ = [
    "CANVAS", "CATEGORIES", "NEGATIVE_KINDS", "SPLITS", "STYLES", "corrupt", "make_split",
    "mismatch_metadata", "prompt_text", "render", "render_negatives", "render_one",
]
