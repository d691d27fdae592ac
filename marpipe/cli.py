"""The ``marpipe`` command line: one subcommand per pipeline rule family.

Every Snakemake rule calls exactly one of these; each has ``--help``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from marpipe.config import ConfigError, GRPOConfig

DEFAULT_PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow striped circle",
                   "a purple square left of a red circle", "three blue dots"]


def parse_sets(pairs: list[str]) -> dict:
    """``key=value`` overrides, values parsed as YAML (``top_k=0.5``, ``clip_range=null``)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_train_config(path: str | None, variant: str | None, sets: list[str]) -> GRPOConfig:
    """``train`` section of a config file, then ``variants.<variant>``, then ``--set`` overrides."""
    d: dict = {}
    if path:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        d.update(doc.get("train", {}))
        if variant:
            variants = doc.get("variants", {})
            if variant not in variants:
                raise ConfigError(f"variants.{variant}: not in {path} (known: {', '.join(variants)})")
            d.update(variants[variant] or {})
    elif variant:
        raise ConfigError("--variant needs --config (the variants are defined there)")
    d.update(parse_sets(sets))
    return GRPOConfig.from_dict(d)


def read_prompts(path: str | None):
    from marpipe.trainer import PromptItem
    if not path:
        return [PromptItem(p, {}) for p in DEFAULT_PROMPTS]
    items = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(PromptItem(row["prompt"], row.get("metadata", {})))
    if not items:
        raise ConfigError(f"{path}: no prompts (expected JSON lines with a 'prompt' key)")
    return items


def cmd_train(args) -> int:
    import torch

    from marpipe import dist
    from marpipe.io.tracking import MLflowRun
    from marpipe.models.registry import load_model
    from marpipe.rewards import build_reward
    from marpipe.trainer import Trainer

    cfg = load_train_config(args.config, args.variant, args.set)
    if args.steps:
        cfg.steps = args.steps
    device = dist.setup(args.device)
    torch.manual_seed(cfg.seed)
    model = load_model(args.model, device=device)
    reward = build_reward(cfg.reward, **cfg.reward_kwargs)
    run_key = args.run_key or Path(args.out).name
    mlflow = MLflowRun(run_key, args.experiment, params=cfg.to_dict(),
                       tags={"model": args.model, "variant": args.variant or "",
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID", "")}) if dist.rank() == 0 else None
    trainer = Trainer(model, cfg, read_prompts(args.prompts), reward, args.out, device=device,
                      mlflow=mlflow, progress=not args.no_progress)
    history = trainer.train(resume=args.resume)
    if dist.rank() == 0 and history:
        first, last = history[0], history[-1]
        print(f"[marpipe] trained {args.model} ({args.variant or 'custom'}) steps {first['step']}..{last['step']}: "
              f"reward {first['reward_mean']:.4f} -> {last['reward_mean']:.4f}")
    dist.teardown()
    return 0


def cmd_init_model(args) -> int:
    import torch

    from marpipe.models.tiny import TinyMAR, TinyMARConfig
    torch.manual_seed(args.seed)
    model = TinyMAR(TinyMARConfig.preset(args.name, **parse_sets(args.set)))
    model.save(args.out)
    print(f"[marpipe] wrote {args.name} ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.out}")
    return 0


def cmd_check_model(args) -> int:
    from marpipe.models import conformance
    return conformance.main([args.model] + (["--device", args.device] if args.device else []))


def cmd_bench(args) -> int:
    if args.what == "train-step":
        from marpipe.bench import bench_train_step
        bench_train_step(steps=args.steps, as_json=args.json, model_names=args.models)
    else:
        from marpipe.metrics.bench import bench_metrics
        bench_metrics(args.metrics, device=args.device or "cpu", json=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marpipe", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="GRPO-train a MAR model (one variant); resumable",
                       description="GRPO training of one (model, variant, reward). Runs under torchrun too.")
    t.add_argument("--model", required=True, help="tiny-nova | tiny-harmon | path.safetensors | nova:DIR | harmon:DIR")
    t.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl")
    t.add_argument("--config", help="YAML with a 'train' section (and 'variants')")
    t.add_argument("--variant", help="name under 'variants' in --config (grpo, fix_decoder, mte, sim, ...)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train key")
    t.add_argument("--prompts", help="JSON lines with 'prompt' (and 'metadata')")
    t.add_argument("--steps", type=int, help="override train.steps")
    t.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    t.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    t.add_argument("--experiment", default="marpipe", help="MLflow experiment name")
    t.add_argument("--run-key", help="MLflow run key (default: the --out folder name)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("init-model", help="write a randomly initialised tiny model")
    i.add_argument("name", choices=["tiny-nova", "tiny-harmon"])
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    i.set_defaults(func=cmd_init_model)

    c = sub.add_parser("check-model", help="run the MAR protocol conformance suite on a model")
    c.add_argument("model")
    c.add_argument("--device")
    c.set_defaults(func=cmd_check_model)

    b = sub.add_parser("bench", help="benchmarks that print figures (train-step, metrics)")
    b.add_argument("what", choices=["train-step", "metrics"])
    b.add_argument("--json", action="store_true")
    b.add_argument("--steps", type=int, default=5, help="measured steps per variant (train-step)")
    b.add_argument("--models", nargs="*", default=["tiny-nova", "tiny-harmon"])
    b.add_argument("--metrics", nargs="*", default=None)
    b.add_argument("--device")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"marpipe {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
