"""The ``marpipe`` command line: one subcommand per pipeline rule family.

Every Snakemake rule calls exactly one of these; each has ``--help``. Pipeline
subcommands take the experiment config (``--config config.yaml`` or
``config/small.yaml``) and name their inputs and outputs explicitly.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from marpipe.bench.commands import add_parsers as add_bench_parsers
from marpipe.config import ConfigError


def parse_sets(pairs: list[str]) -> dict:
    """``key=value`` overrides, values parsed as YAML (``top_k=0.5``, ``clip_range=null``)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def experiment(args):
    """Load and validate the experiment config; ``--set a.b=v`` overrides nested keys."""
    from marpipe import experiment as E
    raw = E.read_config(args.config)
    for key, value in parse_sets(getattr(args, "set", [])).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return E.load(raw)


# --- subcommands ---------------------------------------------------------------------------
def cmd_check_config(args):
    from marpipe import lock as L
    exp = experiment(args)
    rows = sum(len(exp.rows(m)) - 1 for m in exp.models)
    print(f"{args.config}: valid ({len(exp.models)} models, {len(exp.variants)} variants, "
          f"{len(exp.trained_rewards)} rewards: {rows} training runs)")
    lock = L.read(L.lock_path(args.config))
    refusal = L.refusal(L.apply(exp.cfg, lock), lock, args.config)
    if refusal:                 # valid, but a real run would refuse to start
        print(f"marpipe check-config: {refusal}", file=sys.stderr)
        return 1


def cmd_lock(args):
    from marpipe import lock as L
    from marpipe.experiment import read_config
    try:
        new = L.resolve(read_config(args.config))
    except L.LockError as e:
        print(f"marpipe lock: error: {e}", file=sys.stderr)
        return 2
    path = L.lock_path(args.config)
    if args.check:
        old = L.read(path)
        if old != new:
            print(f"marpipe lock: {path} is {'missing' if old is None else 'out of date'}: run "
                  f"`marpipe lock --config {args.config}` and commit it", file=sys.stderr)
            return 1
        print(f"{path}: up to date ({len(new['sources'])} downloads)")
        return 0
    print(f"{L.write(new, args.config)}: {len(new['sources'])} downloads locked")
    return 0


def cmd_preflight(args):
    from marpipe.preflight import preflight
    extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    return preflight(args.profile, args.configfile, args.directory, extra, args.accept_no_gpu)


def cmd_fetch_model(args):
    from marpipe.stages.resources import fetch_base_model
    print(fetch_base_model(experiment(args), args.model, args.root, progress=not args.no_progress))


def cmd_verify_model(args):
    from marpipe.stages.verify import verify_base_model
    ok = verify_base_model(experiment(args), args.model, args.out, args.grid, args.root)
    return 0 if ok else 1


def cmd_fetch_weights(args):
    from marpipe.stages.resources import fetch_weights
    print(fetch_weights(experiment(args), args.name, args.root))


def cmd_fetch_prompts(args):
    from marpipe.stages.resources import fetch_prompts
    print(fetch_prompts(experiment(args), args.name, args.out))


def cmd_warmup(args):
    from marpipe.stages.train import warmup_run
    s = warmup_run(experiment(args), args.model, args.out, args.prompts, args.resources, not args.no_progress)
    if s:
        print(f"[marpipe] warm-up {args.model}: reward {s['reward_first']:.4f} -> {s['reward_last']:.4f}")


def cmd_train(args):
    from marpipe.stages.train import train_run
    s = train_run(experiment(args), args.model, args.reward, args.variant, args.out, args.prompts,
                  args.base_weights, args.resources, not args.no_progress, seed=args.seed)
    if s and s["reward_first"] is not None:
        print(f"[marpipe] {args.model} {args.reward}-{args.variant}: reward "
              f"{s['reward_first']:.4f} -> {s['reward_last']:.4f} in {s['seconds']:.0f} s")


def cmd_select(args):
    from marpipe.stages.select import select_checkpoint
    info = select_checkpoint(experiment(args), args.reward, args.variant, args.run, args.out_weights, args.out_json)
    print(f"[marpipe] {args.run}: step {info['step']} ({info['rule']})")


def cmd_generate(args):
    from marpipe.stages.evaluate import generate
    print(generate(experiment(args), args.model, args.suite, args.out, args.prompt_dir, args.weights,
                   args.row, args.resources))


def cmd_evaluate(args):
    from marpipe.stages.evaluate import evaluate
    reward = None if args.reward in (None, "", "none") else args.reward
    rec = evaluate(experiment(args), args.images, args.suite, args.out, args.model, reward, args.variant,
                   args.selection, args.resources, seed=args.seed)
    print(" ".join(f"{k}={v:.4f}" for k, v in rec["scores"].items()))


def cmd_check_scorer(args):
    from marpipe.metrics.scorer_check import ScorerCheckError, check_scorer
    try:
        check_scorer(experiment(args).cfg, args.weights, args.resources, out_json=args.out, out_table=args.table)
    except ScorerCheckError as e:      # names the scorer, the value and its range; no traceback
        print(f"marpipe check-scorer: error: {e}", file=sys.stderr)
        return 1


def cmd_tables(args):
    from marpipe import tables as T
    exp = experiment(args)
    files = [f for s in args.scores for f in (sorted(Path(s).rglob("*.json")) if Path(s).is_dir() else [s])]
    records = (T.score_records_from_mlflow(exp, args.tracking_uri) if args.from_mlflow
               else T.score_records_from_files(files))
    tables = T.build_tables(exp, records)
    comparison = T.compare_with_paper(tables)
    T.write_tables(tables, comparison, args.out_dir)
    print(T.format_for_terminal(tables, comparison))


def cmd_verdicts(args):
    from marpipe.tables import compare_verdicts, markdown_table
    runs = dict(r.split("=", 1) if "=" in r else (r, r) for r in args.runs)
    df = compare_verdicts({name: Path(path) / "results" / "tables" if (Path(path) / "results").is_dir() else path
                           for name, path in runs.items()})
    print(markdown_table(df))
    n, same = len(df), int((df["agree"] == "yes").sum())
    print(f"\n{same} of {n} verdicts agree across {', '.join(runs)}")
    return 0 if same == n else 1


def cmd_ablations(args):
    from marpipe.stages.ablations import make_ablations
    from marpipe.tables import score_records_from_files
    print(make_ablations(experiment(args), score_records_from_files(args.scores), args.out_dir, args.results))


def cmd_figures(args):
    from marpipe.stages.figures import make_figures
    make_figures(experiment(args), args.out_dir, args.results)


def cmd_mlflow_sync(args):
    from marpipe.audit import mlflow_sync
    from marpipe.io.tracking import MLflowUnreachable
    exp = experiment(args)
    try:
        mlflow_sync(exp, args.results, args.out, args.tracking_uri)
    except MLflowUnreachable as e:      # one message naming the address and what to do; no traceback
        print(f"marpipe mlflow-sync: error: {e}", file=sys.stderr)
        return 2


def cmd_dvc_push(args):
    from marpipe.audit import dvc_version
    dvc_version(experiment(args), args.paths, args.out, remote=args.remote)


def cmd_demo(args):
    from marpipe.demo import run_demo
    return run_demo(args.config, args.profile, args.cores, extra=args.snakemake_args, directory=args.directory)


def cmd_init_model(args):
    import torch

    from marpipe.models.tiny import TinyMAR, TinyMARConfig
    torch.manual_seed(args.seed)
    model = TinyMAR(TinyMARConfig.preset(args.name, **parse_sets(args.set)))
    model.save(args.out)
    print(f"[marpipe] wrote {args.name} ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.out}")


def cmd_check_model(args):
    from marpipe.models import conformance
    return conformance.main([args.model] + (["--device", args.device] if args.device else []))


# --- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marpipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help, config=True):
        s = sub.add_parser(name, help=help, description=help)
        if config:
            s.add_argument("--config", required=True, help="experiment config (config.yaml, config/small.yaml)")
            s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config key, e.g. train.top_k=0.5 (YAML value)")
        s.set_defaults(func=func)
        return s

    add("check-config", cmd_check_config, "validate a config (file:line for YAML errors, key paths for the rest)")
    s = add("lock", cmd_lock, "resolve every download of a config to a commit, each file to its size and sha256 "
                              "(needs hub access; writes <config>.lock.yaml)", config=False)
    s.add_argument("--config", default="config.yaml", help="experiment config (default: config.yaml)")
    s.add_argument("--check", action="store_true", help="exit 1 unless the lock file is what `lock` would write")
    s = add("preflight", cmd_preflight, "check the cluster (partitions, a GPU probe of each job environment, hub, "
                                        "disk, MLflow, the lock) and estimate the run's GPU-hours and disk", config=False)
    s.add_argument("--profile", required=True, help="the Snakemake profile the run uses (slurm, local)")
    s.add_argument("--configfile", nargs="*", default=[], help="as for snakemake (default: config.yaml)")
    s.add_argument("--directory", default=".", help="the run's working directory (default: here)")
    s.add_argument("--accept-no-gpu", action="store_true",
                   help="a GPU probe that finds no CUDA device does not fail (a cluster without GPUs: the CI's)")
    s.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then the run's other snakemake arguments")
    s = add("fetch-model", cmd_fetch_model, "download a base model at its pinned revision (small world: pre-train it)")
    s.add_argument("model"); s.add_argument("--root", default="resources/models")
    s.add_argument("--no-progress", action="store_true")

    s = add("verify-model", cmd_verify_model, "conformance suite + sample grid on a fetched base model")
    s.add_argument("model"); s.add_argument("--out", required=True); s.add_argument("--grid", required=True)
    s.add_argument("--root", default="resources/models")

    s = add("fetch-weights", cmd_fetch_weights, "download scorer/metric weights (small world: train the world scorers)")
    s.add_argument("name"); s.add_argument("--root", default="resources/metrics")

    s = add("fetch-prompts", cmd_fetch_prompts, "write a prompt set as JSON lines (download, or draw from the world)")
    s.add_argument("name"); s.add_argument("--out", required=True)

    for name, func, help in (("warmup", cmd_warmup, "diffusion-head warm-up (AR frozen) of a base model"),
                             ("train", cmd_train, "GRPO training of one (model, reward, variant); resumes")):
        s = add(name, func, help)
        s.add_argument("--model", required=True)
        if name == "train":
            s.add_argument("--reward", required=True); s.add_argument("--variant", required=True)
            s.add_argument("--base-weights", help="start from these weights (e.g. the warmed-up head)")
            s.add_argument("--seed", type=int, help="training seed (default: the config's first of `seeds`)")
        s.add_argument("--out", required=True, help="run folder (checkpoints/, metrics.jsonl, summary.json)")
        s.add_argument("--prompts", required=True, help="training prompt set (JSON lines)")
        s.add_argument("--resources", default="resources"); s.add_argument("--no-progress", action="store_true")

    s = add("select", cmd_select, "pick the reported checkpoint of a run (best* or the fixed step)")
    for a in ("--reward", "--variant", "--run", "--out-weights", "--out-json"):
        s.add_argument(a, required=True)

    s = add("generate", cmd_generate, "sample a benchmark's images for one row")
    for a in ("--model", "--suite", "--out", "--prompt-dir"):
        s.add_argument(a, required=True)
    s.add_argument("--weights", nargs="+", help="weights over the base model, in order: the run's start weights "
                                                "(a warmed-up head), then the selected checkpoint (default: none)")
    s.add_argument("--row", default="base"); s.add_argument("--resources", default="resources")

    s = add("evaluate", cmd_evaluate, "score a row's images with the suite's metrics; log to MLflow")
    for a in ("--model", "--variant", "--suite", "--images", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--reward", help="the training reward (omit for a base model)")
    s.add_argument("--selection", help="the select step's JSON (which checkpoint)")
    s.add_argument("--seed", type=int, help="the run's training seed (with --reward)")
    s.add_argument("--resources", default="resources")

    s = add("check-scorer", cmd_check_scorer, "measure a CLIP-family scorer with clip-benchmark against its "
                                              "expected ranges (config scorer_check); exit 1 outside them")
    s.add_argument("weights", help="the checked weights entry (a key of scorer_check.checks)")
    s.add_argument("--out", required=True); s.add_argument("--table", required=True)
    s.add_argument("--resources", default="resources")

    s = add("tables", cmd_tables, "Tables 1-2, ours beside the paper's (from score files or from MLflow)")
    s.add_argument("--scores", nargs="*", default=[], help="score files, or folders (every *.json below: results/scores)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--from-mlflow", action="store_true"); s.add_argument("--tracking-uri")

    s = sub.add_parser("verdicts", help="several runs' verdicts side by side; exit 1 if any differs",
                       description="e.g. marpipe verdicts study study-2threads study-seeds (run folders, or "
                                   "NAME=FOLDER; a folder holding results/tables, or the tables folder itself)")
    s.add_argument("runs", nargs="+")
    s.set_defaults(func=cmd_verdicts)

    s = add("ablations", cmd_ablations, "Fig. 7: the sweep over top_k, tau and S, with intervals (config ablations:)")
    s.add_argument("--scores", nargs="+", required=True); s.add_argument("--out-dir", required=True)
    s.add_argument("--results", default="results")

    s = add("figures", cmd_figures, "training dynamics (Fig. 1/2b/5) and sample grids (Fig. 6)")
    s.add_argument("--out-dir", required=True); s.add_argument("--results", default="results")

    s = add("mlflow-sync", cmd_mlflow_sync, "send every metrics/score file to MLflow (idempotent)")
    s.add_argument("--results", default="results"); s.add_argument("--out", required=True)
    s.add_argument("--tracking-uri")

    s = add("dvc-push", cmd_dvc_push, "version the artifacts with DVC and push them to the remote")
    s.add_argument("paths", nargs="+"); s.add_argument("--out", required=True); s.add_argument("--remote")

    s = sub.add_parser("demo", help="run the small world end to end and print its tables",
                       description="snakemake all on config/small.yaml with the local profile")
    s.add_argument("--config", nargs="+", default=["config/small.yaml"],
                   help="config file(s), merged in order (the study: config/small.yaml config/study.yaml)")
    s.add_argument("--directory", help="working folder of the run (default: here; the study: study)")
    s.add_argument("--profile", default="local")
    s.add_argument("--cores", type=int, default=2)
    s.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed on to snakemake")
    s.set_defaults(func=cmd_demo)

    s = add("init-model", cmd_init_model, "write a randomly initialised tiny model", config=False)
    s.add_argument("name", choices=["tiny-nova", "tiny-harmon"]); s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    s = add("check-model", cmd_check_model, "MAR protocol conformance suite on a model spec", config=False)
    s.add_argument("model", help="tiny-nova | tiny-harmon | file.safetensors | nova:DIR | harmon:DIR")
    s.add_argument("--device")

    s = sub.add_parser("bench", help="benchmarks that print figures (marpipe bench KIND --help)",
                       description="benchmarks that print figures; each KIND has its own options "
                                   "(marpipe bench KIND --help)",
                       formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=18))
    add_bench_parsers(s)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = os.environ.get("MARPIPE_TORCH_THREADS")
    if threads:     # the study's second summation order (make study THREADS=2); else torch's default (OMP_NUM_THREADS)
        import torch
        torch.set_num_threads(int(threads))
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError) as e:
        print(f"marpipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a known failure class with a clear message
        from marpipe.models.download import DownloadError, ManifestError
        if isinstance(e, (DownloadError, ManifestError)):
            print(f"marpipe {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
