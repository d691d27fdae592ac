"""The "small world": a procedural compositional image world checkable on CPU.

It stands in for the paper's text-to-image setting at 32x32:

* :mod:`marpipe.world.prompts` -- a prompt grammar mirroring the T2I-CompBench
  categories, with structured metadata, and disjoint ``train`` / ``val_*`` /
  ``style_*`` splits;
* :mod:`marpipe.world.render` -- a deterministic renderer (metadata, seed) ->
  image, plus corruptions used as negative examples;
* :mod:`marpipe.world.scorers` -- verifiable scorers that read colour, shape,
  texture, position, occlusion and count back from pixels (rewards
  ``world_compbench``, ``world_detect``, ``world_vqa``);
* :mod:`marpipe.world.learned` -- a tiny open_clip CLIP and a quality MLP trained
  on the world (rewards ``world_hps``, ``world_aesthetic``, ``world_mixed``).

Images follow the marpipe convention: float tensors ``[B, 3, H, W]`` in ``[0, 1]``.
"""
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
