"""``marpipe bench memory``: the peak resident memory of the generate and evaluate stages at N and
factor x N images of a tiny model, each stage in a fresh process (Linux ``VmHWM``): memory that does
not grow with the images gives equal peaks. What it measured: docs/cluster.md.
"""
from __future__ import annotations

import json
import tempfile

import torch

from marpipe.models.tiny import TinyMAR, TinyMARConfig


def vm_kb(field: str) -> int:
    """A field of this process's ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``; Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# 4 x 4 tokens whatever the image size: a rollout costs about the same at any size
MEMORY_MODEL = dict(width=32, depth=2, heads=2, head_width=16, head_blocks=2, zero_init=False,
                    sampling={"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 3.0})


def memory_setup(folder, counts, image_size: int = 64, config: str = "config/small.yaml") -> dict:
    """A tiny base model (``image_size`` pixels, random weights), one preference prompt set per
    count and a config scoring them with ``redness``, under ``folder``: what :func:`memory_child` runs."""
    import copy
    from pathlib import Path

    from marpipe import experiment
    from marpipe.io.files import write_json, write_prompt_set
    from marpipe.models.download import write_manifest
    folder = Path(folder)
    torch.manual_seed(0)
    net = TinyMAR(TinyMARConfig.preset("tiny-nova", image_size=image_size, patch=image_size // 4, **MEMORY_MODEL))
    net.save(folder / "resources" / "models" / "tiny-nova" / "model.safetensors")
    write_manifest(folder / "resources" / "models" / "tiny-nova")
    cfg = copy.deepcopy(experiment.load(config).cfg)
    ev = cfg["evaluation"]
    ev["preference"].update(images_per_prompt=1, metrics={"Redness": {"scorer": "redness"}})
    cfg["device"] = "cpu"
    cfg["models"]["tiny-nova"].pop("sampling", None)
    write_json(folder / "config.json", cfg)
    for n in counts:
        write_prompt_set(folder / f"prompts-{n}" / f"{ev['preference']['prompts']}.jsonl",
                         [{"prompt": f"a red circle number {i}"} for i in range(n)])
    return cfg


def memory_child(stage: str, folder: str, n: str) -> None:
    """Run one stage (``generate`` | ``evaluate``) on ``n`` images set up by :func:`memory_setup`;
    print its process's peak resident set and the resident set before the stage, in MiB (JSON)."""
    from pathlib import Path

    from marpipe import experiment
    from marpipe.io.files import read_json
    from marpipe.stages import evaluate as E
    torch.set_num_threads(1)
    folder = Path(folder)
    exp = experiment.Experiment(read_json(folder / "config.json"))
    bundle = folder / f"images-{n}.npz"
    E.log_scores = lambda *a, **k: False            # no MLflow here
    start = vm_kb("VmRSS")
    if stage == "generate":
        E.generate(exp, "tiny-nova", "preference", bundle, folder / f"prompts-{n}",
                   resources=str(folder / "resources"))
    else:
        E.evaluate(exp, bundle, "preference", folder / f"scores-{n}.json", "tiny-nova", None, "base",
                   resources=str(folder / "resources"))
    print(json.dumps({"start_mb": start / 1024, "peak_mb": vm_kb("VmHWM") / 1024}))


def _stage_memory(stage: str, folder, n: int) -> dict:
    import subprocess
    import sys
    code = "import sys; from marpipe.bench.memory import memory_child; memory_child(*sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, stage, str(folder), str(n)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench memory: {stage} of {n} images failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(images: int = 256, factor: int = 8, image_size: int = 64, as_json: bool = False,
                 config: str = "config/small.yaml") -> dict:
    """``marpipe bench memory``: peak resident memory of the generate and evaluate stages at
    ``images`` and ``factor`` x ``images`` images of the tiny model (``image_size`` pixels), each
    run in a fresh process (Linux ``VmHWM``). Memory that does not grow with the images: equal peaks."""
    counts = (images, images * factor)
    report = {"image_size": image_size, "float32_mb_per_image": 3 * image_size ** 2 * 4 / 2**20, "stages": {}}
    with tempfile.TemporaryDirectory() as d:
        memory_setup(d, counts, image_size, config)
        for n in counts:                              # generate writes the bundle evaluate reads
            for stage in ("generate", "evaluate"):
                report["stages"].setdefault(stage, {})[n] = _stage_memory(stage, d, n)
    for r in report["stages"].values():
        r["growth_mb"] = r[counts[1]]["peak_mb"] - r[counts[0]]["peak_mb"]
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    print(f"peak resident memory (MiB, VmHWM of a fresh process) of a stage, tiny model, {image_size}x{image_size} "
          f"images ({report['float32_mb_per_image'] * counts[1]:.0f} MiB as float32 at {counts[1]})")
    print(f"  {'stage':<10} {'images':>7} {'at start':>9} {'peak':>9}")
    for stage, r in report["stages"].items():
        for n in counts:
            print(f"  {stage:<10} {n:>7} {r[n]['start_mb']:>9.1f} {r[n]['peak_mb']:>9.1f}")
        print(f"  {stage:<10} growth from {counts[0]} to {counts[1]} images: {r['growth_mb']:+.1f} MiB")
    return report
