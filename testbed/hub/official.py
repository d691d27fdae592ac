"""Build the NOVA / Harmon fixture repositories with the OFFICIAL model code, in a side venv:
``.venv-nova/bin/python -m testbed.hub.official nova WORK`` / ``.venv-harmon/bin/python -m
testbed.hub.official harmon WORK`` (run from the repository root, ``$MARPIPE_OFFICIAL_CODE`` naming the
official code). The models are :mod:`testbed.official`'s tiny official classes, laid out as the hub
repositories are; the one deviation from the real files of each (NOVA's ``__transformer__.py``
registrations, Harmon's declared ``mar.py``/``vae.py`` blocks) is described in ``docs/development.md``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_HEADER = ("# Copyright (c) 2024-present, BAAI. All Rights Reserved.\n#\n"
           "# Licensed under the Apache License, Version 2.0 (the \"License\");\n"
           "##############################################################################\n")
TEXT_ENCODER_PY = _HEADER + '"""Text encoder model."""\n\nfrom diffnext.models.text_encoders.phi import PhiEncoderModel  # noqa\n'
VAE_PY = _HEADER + '"""VAE model."""\n\nfrom diffnext.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa\n'
# the files' text is part of the fixture's bytes, which config/rehearsal.yaml pins
TRANSFORMER_PY = _HEADER + '''"""Transformer model."""

from diffnext.models.transformers.transformer_nova import NOVATransformer3DModel  # noqa

# marpipe.hub fixture only (not in the real file): the tiny architectures this transformer names
from diffnext.models.transformers import transformer_nova as _tn  # noqa: E402

_tn.VIDEO_ENCODERS.register("{video}", func=_tn.video_encoder, depth=2, embed_dim={w}, num_heads={h})
_tn.IMAGE_ENCODERS.register("{image}", func=_tn.image_encoder, depth=2, embed_dim={w}, num_heads={h})
_tn.IMAGE_DECODERS.register("{decoder}", func=_tn.image_decoder, depth=2, embed_dim={w})
'''
#: BAAI/nova-d48w1024-sd512's model_index.json (inferred: nova-d48w1536-sdxl1024's file with
#: DDPMScheduler and AutoencoderKL, which gives sd512's 362 bytes)
MODEL_INDEX = {"_class_name": "NOVAPipeline", "tokenizer": ["transformers", "CodeGenTokenizerFast"],
               "scheduler": ["diffusers", "DDPMScheduler"], "vae": ["__vae__", "AutoencoderKL"],
               "text_encoder": ["__text_encoder__", "PhiEncoderModel"],
               "transformer": ["__transformer__", "NOVATransformer3DModel"]}


def _official() -> Path:
    code = os.environ.get("MARPIPE_OFFICIAL_CODE")
    if not code or not Path(code).is_dir():
        raise SystemExit("MARPIPE_OFFICIAL_CODE must name the folder of the official NOVA/Harmon code")
    return Path(code)


def _common(d: Path, repo_id: str) -> None:
    from .repos import _common as common
    common(d, repo_id)


def _shard2(module, folder: Path) -> None:
    """``model-0000{1,2}-of-00002.safetensors`` + ``model.safetensors.index.json`` (the layout of
    the real, 5.5 GB text encoder), the state dict split in two halves in key order."""
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in module.state_dict().items()}
    keys = sorted(sd)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    weight_map, total = {}, 0
    for i, part in enumerate(halves, 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = name
            total += sd[k].numel() * sd[k].element_size()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")


def build_nova(work: Path) -> None:
    import tempfile

    from testbed.official import nova_tiny as nt
    nt.import_diffnext(_official())
    parts = nt.tiny_components(image_size=64, seed=0)
    _common(work, "BAAI/nova-d48w1024-sd512")
    (work / ".gitignore").write_text("__pycache__/\n*.py[cod]\n")
    (work / "LICENSE").write_text("Apache License, Version 2.0 (the license of BAAI/nova-d48w1024-sd512)\n")
    (work / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    (work / "scheduler").mkdir()
    (work / "scheduler" / "scheduler_config.json").write_text(json.dumps(nt.SCHEDULER_CONFIG, indent=2) + "\n")
    parts["transformer"].save_pretrained(str(work / "transformer"))
    video, image, decoder = nt.TINY_ARCH
    (work / "transformer" / "__transformer__.py").write_text(
        TRANSFORMER_PY.format(video=video, image=image, decoder=decoder, w=nt.WIDTH, h=nt.HEADS))
    parts["vae"].save_pretrained(str(work / "vae"))
    (work / "vae" / "__vae__.py").write_text(VAE_PY)
    te = work / "text_encoder"
    with tempfile.TemporaryDirectory() as tmp:
        parts["text_encoder"].save_pretrained(tmp)
        te.mkdir()
        (te / "config.json").write_text(Path(tmp, "config.json").read_text())
    _shard2(parts["text_encoder"], te)
    (te / "__text_encoder__.py").write_text(TEXT_ENCODER_PY)
    parts["tokenizer"].save_pretrained(str(work / "tokenizer"))


def build_harmon(work: Path) -> None:
    from testbed.official import harmon_tiny as ht
    ht.build_tiny_harmon(_official(), work, seed=0, tiny_arch=True)
    (work / "MANIFEST.sha256").unlink(missing_ok=True)     # marpipe's, not the hub's
    _common(work, "wusize/Harmon-1_5B")


def main(argv=None) -> int:
    import argparse

    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("key", choices=["nova", "harmon"])
    ap.add_argument("work")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    {"nova": build_nova, "harmon": build_harmon}[a.key](work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
