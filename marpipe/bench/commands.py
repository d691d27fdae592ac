"""The subcommands of ``marpipe bench``: per kind, its options and how it runs the benchmark. The
benchmark modules import torch and are imported only by the kind that runs; this module does not, so
that every ``marpipe`` call builds its parser without torch. The benchmarks: docs/development.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TINY_PRESETS = ["tiny-nova", "tiny-harmon"]
DEMO_WEIGHTS = "resources/models/tiny-nova/model.safetensors"   # the demo's pre-trained tiny-nova
SPEC = ("a model spec: a tiny preset (tiny-nova, tiny-harmon), a tiny model's weights (FILE.safetensors), "
        "nova:DIR or harmon:DIR")


def _json(p):
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _device(p):
    p.add_argument("--device", help="torch device (default: cuda where available, else cpu)")


def _preset(p):
    p.add_argument("--preset", choices=["paper", "reference"], default="reference",
                   help="how the loss is assembled (train.preset; default reference, as the configs: the trainer "
                        "of the model's family)")


def _weights_file(model: str, hint: str = "") -> None:
    if model.endswith(".safetensors") and not Path(model).is_file():
        raise FileNotFoundError(f"--model {model}: no such file{hint}")


# --- train-step, rollout (marpipe.bench.train) ---------------------------------------------------
def add_train_step(p):
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant (default 5)")
    p.add_argument("--models", nargs="+", default=TINY_PRESETS, metavar="MODEL",
                   help=f"{SPEC} (default: both tiny presets)")
    _preset(p); _device(p); _json(p)


def run_train_step(args):
    from marpipe.bench.train import bench_train_step
    bench_train_step(steps=args.steps, as_json=args.json, model_names=args.models, device=args.device,
                     preset=args.preset)


def add_rollout(p):
    p.add_argument("--models", nargs="+", default=TINY_PRESETS, metavar="MODEL",
                   help=f"{SPEC} (default: both tiny presets)")
    _device(p); _json(p)


def run_rollout(args):
    from marpipe.bench.train import bench_rollout
    bench_rollout(model_names=args.models, device=args.device, as_json=args.json)


# --- reward-rise, warmup (marpipe.bench.reward) ---------------------------------------------------
def add_reward_rise(p):
    p.add_argument("--model", default=DEMO_WEIGHTS, help=f"{SPEC} (default: {DEMO_WEIGHTS})")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    _preset(p); _device(p); _json(p)


def run_reward_rise(args):
    from marpipe.bench.reward import bench_reward_rise
    _weights_file(args.model, " (the embedded default writes it: make demo, or snakemake "
                              f"{args.model} --configfile config/small.yaml)")
    bench_reward_rise(args.model, steps=args.steps, seeds=args.seeds, as_json=args.json, device=args.device,
                      preset=args.preset)


def add_warmup(p):
    p.add_argument("--config", default="config/small.yaml", help="experiment config (default: config/small.yaml)")
    p.add_argument("--models", nargs="+", help="the config's models warmed up (default: all)")
    p.add_argument("--steps", type=int, help="warm-up steps (default: the config's)")
    p.add_argument("--lr", type=float, help="warm-up learning rate (default: the config's)")
    p.add_argument("--quality", default="world_aesthetic",
                   help="scorer reported beside the reward (default world_aesthetic; '' for none)")
    _device(p); _json(p)


def run_warmup(args):
    """The pipeline's warm-up (config ``warmup``) from each fetched base model, measured before and after."""
    from dataclasses import replace

    import torch

    from marpipe.bench.reward import bench_warmup
    from marpipe.config import ConfigError
    from marpipe.experiment import load
    from marpipe.rewards import build_reward
    from marpipe.stages.resources import load_base_model
    exp = load(args.config)
    warm = [m for m in exp.cfg["models"] if exp.has_warmup(m)]
    if not warm:
        raise ConfigError(f"{args.config}: no model has warmup: true")
    cfg = exp.warmup_config(warm[0])
    cfg = replace(cfg, steps=args.steps or cfg.steps, lr=args.lr or cfg.lr, save_every=10**6)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # loaded first: a model not fetched yet is named (with its rule) before any scorer is built
    models = {m: load_base_model(exp, m, device) for m in args.models or exp.cfg["models"]}
    scorers = {"aesthetic": build_reward(args.quality, **exp.scorer_kwargs(args.quality))} if args.quality else {}
    bench_warmup(models, cfg, exp.build_reward(cfg.reward), scorers, as_json=args.json, device=device)


# --- memory (marpipe.bench.memory) -----------------------------------------------------------------
def add_memory(p):
    p.add_argument("--images", type=int, default=256, help="images of the smaller run, N (default 256)")
    p.add_argument("--factor", type=int, default=8, help="the larger run has factor x N images (default 8)")
    p.add_argument("--image-size", type=int, default=64, help="pixels per side of the tiny model's images (default 64)")
    p.add_argument("--config", default="config/small.yaml", help="experiment config (default: config/small.yaml)")
    _json(p)


def run_memory(args):
    from marpipe.bench.memory import bench_memory
    bench_memory(images=args.images, factor=args.factor, image_size=args.image_size, as_json=args.json,
                 config=args.config)


# --- gpu (marpipe.bench.gpu) -------------------------------------------------------------------------
def add_gpu(p):
    p.add_argument("--size", choices=["tiny", "real"], default="tiny",
                   help="tiny: the tiny presets (CPU, seconds); real: the official classes at their real sizes "
                        "with random weights (one GPU)")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="tiny-nova tiny-harmon (--size tiny) or nova harmon (--size real; default: both)")
    p.add_argument("--variants", nargs="+", choices=["grpo", "fix_decoder", "mte", "sim"],
                   help="variants stepped (default: all four)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--config", default="config.yaml", help="experiment config: sampling, variants (default config.yaml)")
    p.add_argument("--official", help="folder of the official NOVA/Harmon code (default: $MARPIPE_OFFICIAL_CODE)")
    p.add_argument("--json-out", help="write the JSON report to this file")
    _device(p); _json(p)


def run_gpu(args):
    from marpipe.bench.gpu import bench_gpu
    bench_gpu(size=args.size, device=args.device, dtype=args.dtype, models=args.models, variants=args.variants,
              config=args.config, as_json=args.json, official=args.official, json_out=args.json_out)


# --- grad-noise (marpipe.bench.grad_noise) ----------------------------------------------------------
def add_grad_noise(p):
    p.add_argument("--model", default="tiny-nova", help=f"{SPEC}; a preset is randomly initialised (default tiny-nova)")
    p.add_argument("--draws", type=int, default=8, help="head-noise draws R of the recorded batch (default 8)")
    p.add_argument("--prompts", type=int, help="prompts in the batch, x4 images each (default: 3 for a tiny model, 1 "
                                               "for a real one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the recorded batch and the draws (default 0)")
    p.add_argument("--csv", help="also write the table as CSV here (the study's grad_noise rule)")
    _preset(p); _device(p); _json(p)


def run_grad_noise(args):
    from marpipe.bench.grad_noise import bench_grad_noise, write_csv
    _weights_file(args.model)
    report = bench_grad_noise(args.model, draws=args.draws, preset=args.preset, seed=args.seed, device=args.device,
                              as_json=args.json, prompts=args.prompts)
    if args.csv:
        print(f"[marpipe] wrote {write_csv(report, args.csv)}")


# --- metrics (marpipe.bench.metrics) ------------------------------------------------------------------
def add_metrics(p):
    p.add_argument("--metrics", nargs="+", metavar="ROW",
                   help="rows to run: a name, or kind:name (model:gdino Color reward:mixed; default: all)")
    p.add_argument("--size", choices=["tiny", "real"], default="real",
                   help="real (default): the published sizes with random weights (--device cuda); tiny: tiny "
                        "random-weight models (CPU, seconds), a size the test bed registers (python -m testbed.metrics)")
    p.add_argument("--batch-size", type=int, help="images per call (tiny: 4; real: the config's evaluation.batch_size)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row, the median printed (default 3)")
    p.add_argument("--config", default="config.yaml", help="experiment config whose metrics run (default config.yaml)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    _json(p)


def run_metrics(args):
    from marpipe.bench.metrics import bench_metrics
    bench_metrics(args.metrics, device=args.device, json=args.json, size=args.size, config=args.config,
                  batch_size=args.batch_size, repeats=args.repeats, progress=True)


KINDS = {   # kind -> (help, options, run)
    "train-step": ("step time and peak memory per variant; MTE/Fix Decoder, Sim/MTE; the real configs' costs",
                   add_train_step, run_train_step),
    "rollout": ("head token-steps and wall time of one rollout, the head on what the loss reads or on every "
                "masked token", add_rollout, run_rollout),
    "reward-rise": ("each variant's reward before and after training from a pre-trained tiny model",
                    add_reward_rise, run_reward_rise),
    "warmup": ("the head warm-up on each base model: reward, quality, grain before and after",
               add_warmup, run_warmup),
    "memory": ("peak resident memory of generate and evaluate at N and factor x N images", add_memory, run_memory),
    "gpu": ("one rollout and one training step per variant, timed phase by phase, beside the official sampler",
            add_gpu, run_gpu),
    "grad-noise": ("the diffusion head's share of the policy-gradient noise, per variant, S and top_k",
                   add_grad_noise, run_grad_noise),
    "metrics": ("speed, memory and score sanity of every metric and reward of a config", add_metrics, run_metrics),
}


def add_parsers(bench: argparse.ArgumentParser) -> None:
    """``marpipe bench KIND``: a subcommand per kind, each with its own options."""
    kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (help, add, run) in KINDS.items():
        p = kinds.add_parser(kind, help=help, description=help)
        add(p)
        p.set_defaults(func=run)
