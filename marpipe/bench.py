"""``marpipe bench train-step``: median GRPO step time and peak memory per variant.

All variants run side by side in one process, interleaved step by step (the
order reversed on every other step), so the ratios (MTE / Fix Decoder, Sim /
MTE) compare like with like: each ratio is the median over steps of the
per-step ratio of two runs measured moments apart, which cancels the slow drift
of a shared machine's load. Peak memory is
CUDA's peak allocation on a GPU; on a CPU it is the growth of the resident set
during one step (Linux ``VmHWM`` after a reset), measured in a fresh child
process per variant.

Models: the tiny presets (``tiny-nova``, ``tiny-harmon``), or any model spec that
:func:`marpipe.models.registry.load_model` takes (``nova:DIR``, ``harmon:DIR``, a stand-in):
on a GPU, a real-size folder with random weights measures the real proportions. Whatever the
device, it also prints the head-versus-transformer split of one rollout of the real NOVA and
Harmon, computed from their configs (:mod:`marpipe.models.cost`).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import tempfile

import torch

from marpipe.config import GRPOConfig
from marpipe.grpo import harmon_mask_counts, nova_mask_counts
from marpipe.models.cost import rollout_cost, train_step_cost
from marpipe.models.registry import TINY, model_family
from marpipe.models.tiny import TinyMAR, TinyMARConfig, head_to_ar_ratio
from marpipe.rewards import build_reward
from marpipe.trainer import PromptItem, Trainer

VARIANTS = {
    "grpo": dict(),
    "fix_decoder": dict(fix_decoder=True),
    "mte": dict(fix_decoder=True, mte=True, top_k=0.3),             # S: the preset's
    "sim": dict(fix_decoder=True, mte=True, top_k=0.3, sim=True),
}
# the paper's step counts (Sec. 4.1): 64 AR steps, 25 head steps, 12 x 10 of them trained. At the
# tiny models' own 8 AR steps MTE's once-per-image seeds would weigh 8x their real share of a rollout.
PAPER_SAMPLING = {"ar_steps": 64, "diffusion_steps": 25}
BENCH = dict(group_size=4, prompts_per_step=3, train_ar_steps=12, train_diffusion_steps=10, lr=1e-5)
# a loaded model spec (nova:DIR, harmon:DIR, ...) samples with its own settings; one prompt per step
SPEC_BENCH = dict(BENCH, prompts_per_step=1, lr=1e-6)
# reward-rise trains the demo's model at its own 8 AR x 10 head steps, the paper's shares trained
RISE = dict(group_size=4, prompts_per_step=3, train_ar_steps=2, train_diffusion_steps=4)
PROMPTS = ["a red circle", "a blue square left of a green circle", "three yellow striped triangles"]


def _model(spec: str, device: str):
    torch.manual_seed(0)
    if spec in TINY:
        return TinyMAR(TinyMARConfig.preset(spec, zero_init=False, sampling=PAPER_SAMPLING))
    from marpipe.models.conformance import zero_init_probe
    from marpipe.models.registry import load_model
    model = load_model(spec, device=device)
    return zero_init_probe(model, device)[0]    # a fresh head outputs 0: perturb it, as the suite does


def _trainer(model_name: str, variant: str, device: str, out: str, preset: str = "reference") -> Trainer:
    model = _model(model_name, device)
    cfg = GRPOConfig(**(BENCH if model_name in TINY else SPEC_BENCH), **VARIANTS[variant],
                     preset=preset, model_family=model_family(model), steps=10**6, save_every=10**6)
    return Trainer(model, cfg, [PromptItem(p, {}) for p in PROMPTS], build_reward("redness"),
                   out, device=device, progress=False)


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_rss_child(model_name, variant, device, preset, q):
    """Peak RSS growth of one training step over the process after set-up (Linux)."""
    with tempfile.TemporaryDirectory() as d:
        t = _trainer(model_name, variant, device, d, preset)
        t.train_step(0)                       # allocator warm-up, lazy inits
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # reset the peak (VmHWM) to the current RSS
        base = _vm_kb("VmRSS")
        t.train_step(1)
        q.put((_vm_kb("VmHWM") - base) / 1024)


def peak_memory_mb(model_name: str, variant: str, device: str, preset: str = "reference") -> float:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as d:
            _trainer(model_name, variant, device, d, preset).train_step(1)
        return torch.cuda.max_memory_allocated() / 2**20
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_rss_child, args=(model_name, variant, device, preset, q))
    p.start()
    p.join()
    return q.get()


def bench_train_step(steps: int = 5, as_json: bool = False, model_names=("tiny-nova", "tiny-harmon"),
                     device: str | None = None, preset: str = "reference") -> dict:
    """``preset``: how the loss is assembled (``train.preset``; the MTE variant's extra trajectories
    differ: ``reference`` samples them once per image, ``paper`` at every trained AR step)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = {"device": device, "threads": torch.get_num_threads(), "steps": steps, "preset": preset, "models": {}}
    for name in model_names:
        with tempfile.TemporaryDirectory() as d:
            trainers = {v: _trainer(name, v, device, f"{d}/{v}", preset) for v in VARIANTS}
            times = {v: [] for v in VARIANTS}
            for t in trainers.values():  # warm-up step, not timed
                t.train_step(0)
            for step in range(1, steps + 1):
                order = list(trainers.items())
                for v, t in order if step % 2 else order[::-1]:
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    row = t.train_step(step)
                    times[v].append(sum(row[k] for k in ("time_rollout", "time_reward", "time_loss", "time_optim")))
        med = {v: statistics.median(ts) for v, ts in times.items()}

        def ratio(a: str, b: str) -> float:
            return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 3)  # noqa: B023

        report["models"][name] = {
            "head_to_ar_macs_per_token": (round(head_to_ar_ratio(TinyMARConfig.preset(name)), 4)
                                          if name in TINY else None),
            "median_step_s": {v: round(s, 4) for v, s in med.items()},
            "peak_memory_mb": {v: round(peak_memory_mb(name, v, device, preset), 1) for v in VARIANTS},
            "ratio_mte_over_fix_decoder": ratio("mte", "fix_decoder"),
            "ratio_sim_over_mte": ratio("sim", "mte"),
        }
    report["real_configs"] = real_config_costs(preset)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device {device}, {report['threads']} threads, median of {steps} steps per variant, "
              f"preset {preset}")
        for name, r in report["models"].items():
            print(f"\n{name}" + (f" (head/AR multiply-adds per token: {r['head_to_ar_macs_per_token']})"
                                 if r["head_to_ar_macs_per_token"] is not None else ""))
            print(f"  {'variant':<12} {'step (s)':>9} {'peak MB':>9}")
            for v in VARIANTS:
                print(f"  {v:<12} {r['median_step_s'][v]:>9.4f} {r['peak_memory_mb'][v]:>9.1f}")
            print(f"  MTE / Fix Decoder = {r['ratio_mte_over_fix_decoder']:.3f}   "
                  f"Sim / MTE = {r['ratio_sim_over_mte']:.3f}")
        print_real_config_costs(report["real_configs"], preset)
    return report


def real_config_costs(preset: str = "reference") -> dict:
    """One rollout and one training step of the real NOVA / Harmon (1,024 tokens, 64 AR steps, 25
    head steps, CFG, 12 x 10 trained steps), computed from their configs under each model's official
    mask schedule and ``preset``'s MTE (:func:`marpipe.models.cost.train_step_cost`)."""
    out = {}
    for name, counts in (("nova", nova_mask_counts(1024, 64)), ("harmon", harmon_mask_counts(1024, 64))):
        cfg = GRPOConfig(preset=preset, model_family=name, **VARIANTS["mte"])
        S = cfg.S + (0 if cfg.mte_rollout_in_average else 1)          # trajectories incl. the rollout's
        r = rollout_cost(name, counts, 25, S=S, guided=cfg.mte_guided)
        kw = dict(loss_tokens=cfg.loss_tokens, beta=cfg.beta)
        fd = train_step_cost(name, counts, "fix_decoder", **kw)
        mte = train_step_cost(name, counts, "mte", S=S, guided=cfg.mte_guided, scope=cfg.mte_scope, top_k=cfg.top_k,
                              units_per_token=4 if cfg.granularity == "pixel" else 1, **kw)
        out[name] = {k: (round(v, 4) if isinstance(v, float) and v < 10 else v) for k, v in r.items()}
        out[name]["ratio_mte_over_fix_decoder"] = round(mte / fd, 3)
        # one training step per variant, the rollout's head on every masked token (before) or on what
        # the loss reads (after)
        steps = {}
        for v in VARIANTS:
            vc = GRPOConfig(preset=preset, model_family=name, **VARIANTS[v])
            vkw = dict(kw, S=S, guided=vc.mte_guided, scope=vc.mte_scope, top_k=vc.top_k,
                       units_per_token=4 if vc.granularity == "pixel" else 1) if vc.mte else kw
            before, after = (train_step_cost(name, counts, v, full_head=f, **vkw) for f in (True, False))
            steps[v] = {"before": before, "after": after, "ratio": round(before / after, 3)}
        out[name]["train_step_macs"] = steps
    return out


def print_real_config_costs(costs: dict, preset: str) -> None:
    print(f"\nreal configs, one rollout of one image (computed from the configs; CFG; multiply-adds; "
          f"MTE as preset {preset}):")
    print(f"  {'model':<7} {'AR steps':>8} {'transformer':>12} {'head':>10} {'head share':>10} "
          f"{'MTE extra':>9} {'MTE/FixDec step':>15}   head passes: official sampler / marpipe / reference")
    for name, r in costs.items():
        p = r["head_passes"]
        print(f"  {name:<7} {r['ar_steps']:>8} {r['transformer_macs']:>12.3g} {r['head_macs']:>10.3g} "
              f"{r['head_share']:>10.1%} {r['mte_extra_share']:>9.1%} {r['ratio_mte_over_fix_decoder']:>15.3f}   "
              f"{p['official_sampler']:,} / {p['marpipe']:,} / {p['reference']:,}")
    print("  one training step, multiply-adds per image with the rollout's head on every masked token -> on "
          "what the loss reads:")
    for name, r in costs.items():
        print(f"  {name:<7} " + "   ".join(f"{v} {x['before']:.3g} -> {x['after']:.3g} ({x['ratio']:.2f}x)"
                                         for v, x in r["train_step_macs"].items()))


def _held_out(n: int):
    """``n`` unseen style prompts (texts, metadata): the held-out set of both reward benches."""
    from marpipe.world.prompts import make_split
    test = make_split("style", n, seed=1)
    return [m["prompt"] for m in test], test


def _train_prompts() -> list[PromptItem]:
    from marpipe.world.prompts import make_split
    return [PromptItem(m["prompt"], m) for m in make_split("train", 2000)]


def total_variation(images: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels: the grain of noisy samples."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return float((dx + dy) / 2)


def bench_reward_rise(weights: str, steps: int = 30, seeds=(0, 1), reward: str = "redness", lr: float = 3e-4,
                      held_out: int = 24, as_json: bool = False, device: str | None = None,
                      preset: str = "paper") -> dict:
    """``marpipe bench reward-rise``: does each variant raise a simple reward?

    Trains every variant for ``steps`` steps from the same pre-trained tiny model
    (``weights``) on the world's training prompts, once per seed, and reports the
    mean training reward of the first and last five steps and the mean reward of
    images sampled (fixed seed) for ``held_out`` unseen style prompts before and after;
    the loss assembled by ``preset`` (``paper`` | ``reference``, the reference trainer of the
    model's family). The per-step reward, KL and gradient norm (before clipping) of every run
    are in the report's ``curves``; the table adds the last five steps' KL and the median norm.
    """
    from marpipe.models.registry import load_model
    from marpipe.rollout import sample_images

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    score = build_reward(reward)
    train = _train_prompts()
    texts, meta = _held_out(held_out)

    def held_out_reward(model) -> float:
        images = sample_images(model, texts, seed=0, device=device)
        return float(score(images, texts, meta).mean())

    base = load_model(weights, device=device)
    family = model_family(base)
    before = held_out_reward(base)
    report = {"weights": weights, "reward": reward, "steps": steps, "lr": lr, "preset": preset,
              "model_family": family, "held_out_before": before, "runs": {}, "curves": {}}
    for variant in VARIANTS:
        for seed in seeds:
            model = load_model(weights, device=device)
            cfg = GRPOConfig(**RISE, lr=lr, **VARIANTS[variant], steps=steps, save_every=10**6, seed=seed,
                             preset=preset, model_family=family)
            with tempfile.TemporaryDirectory() as d:
                rows = Trainer(model, cfg, train, score, d, device=device, progress=False).train()
            curves = {k: [row[k] for row in rows] for k in ("reward_mean", "kl", "grad_norm")}
            r = curves["reward_mean"]
            report["curves"][f"{variant}/seed{seed}"] = curves
            report["runs"][f"{variant}/seed{seed}"] = {
                "train_first5": statistics.mean(r[:5]), "train_last5": statistics.mean(r[-5:]),
                "held_out_after": held_out_reward(model), "kl_last5": statistics.mean(curves["kl"][-5:]),
                "grad_norm_median": statistics.median(curves["grad_norm"])}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{reward} reward, {steps} steps at lr {lr}, preset {preset} ({family}); held-out: {held_out} "
              f"style prompts, before training {before:.4f}")
        print(f"  {'variant/seed':<18} {'train first 5':>14} {'train last 5':>13} {'held-out after':>15} "
              f"{'KL last 5':>10} {'median |g|':>11}")
        for key, r in report["runs"].items():
            print(f"  {key:<18} {r['train_first5']:>14.4f} {r['train_last5']:>13.4f} {r['held_out_after']:>15.4f} "
                  f"{r['kl_last5']:>10.2e} {r['grad_norm_median']:>11.3g}")
    return report


def bench_warmup(models: dict, cfg: GRPOConfig, reward, scorers: dict | None = None,
                 held_out: int = 48, as_json: bool = False, device: str | None = None) -> dict:
    """``marpipe bench warmup``: what the head warm-up (GRPO, AR frozen) does to each model.

    ``models`` maps a name to a loaded base model (on ``device``); each is measured,
    warmed up in place with ``cfg`` on the world's training prompts, and measured again. A measurement samples one
    image (fixed seed) for each of ``held_out`` unseen style prompts and reports the
    warm-up's ``reward``, every extra scorer in ``scorers`` (name -> reward callable)
    and the images' total variation (renders of the same prompts give the clean level).
    """
    from marpipe.rollout import sample_images
    from marpipe.world import render

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scorers = {"reward": reward, **(scorers or {})}
    texts, meta = _held_out(held_out)
    train = _train_prompts()

    def measure(images) -> dict:
        out = {k: float(f(images, texts, meta).mean()) for k, f in scorers.items()}
        return {**out, "total_variation": total_variation(images)}

    report = {"steps": cfg.steps, "lr": cfg.lr, "held_out": held_out,
              "renders": measure(render(meta, 0)), "models": {}}
    for name, model in models.items():
        before = measure(sample_images(model, texts, seed=0, device=device))
        with tempfile.TemporaryDirectory() as d:
            rows = Trainer(model, cfg, train, reward, d, device=device, progress=False).train()
        r = [row["reward_mean"] for row in rows]
        k = max(1, min(5, len(r) // 2))
        report["models"][name] = {"before": before, "after": measure(sample_images(model, texts, seed=0, device=device)),
                                  "train_first": statistics.mean(r[:k]), "train_last": statistics.mean(r[-k:])}
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    cols = list(report["renders"])
    print(f"head warm-up: {cfg.steps} steps at lr {cfg.lr}, AR frozen; held-out: {held_out} style prompts")
    print(f"  {'':<24}" + "".join(f"{c:>16}" for c in cols))
    print(f"  {'renders (clean)':<24}" + "".join(f"{report['renders'][c]:>16.4f}" for c in cols))
    for name, m in report["models"].items():
        for when in ("before", "after"):
            print(f"  {name + ' ' + when:<24}" + "".join(f"{m[when][c]:>16.4f}" for c in cols))
        print(f"  {name}: training reward {m['train_first']:.4f} -> {m['train_last']:.4f}")
    return report


# --- marpipe bench memory -------------------------------------------------------------------
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
    start = _vm_kb("VmRSS")
    if stage == "generate":
        E.generate(exp, "tiny-nova", "preference", bundle, folder / f"prompts-{n}",
                   resources=str(folder / "resources"))
    else:
        E.evaluate(exp, bundle, "preference", folder / f"scores-{n}.json", "tiny-nova", None, "base",
                   resources=str(folder / "resources"))
    print(json.dumps({"start_mb": start / 1024, "peak_mb": _vm_kb("VmHWM") / 1024}))


def _stage_memory(stage: str, folder, n: int) -> dict:
    import subprocess
    import sys
    code = "import sys; from marpipe.bench import memory_child; memory_child(*sys.argv[1:])"
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


# --- marpipe bench rollout --------------------------------------------------------------------
def _timed_rollout(model, plan, device, **kw) -> tuple[float, int]:
    """Seconds of one rollout of the bench's batch, and the head rows it ran (counted at the head)."""
    import time

    from marpipe.rollout import rollout
    rows, head = [0], model.head

    def counted(x_t, step, z):
        rows[0] += x_t.shape[0]
        return head(x_t, step, z)
    model.head = counted
    try:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rollout(model, PROMPTS, BENCH["group_size"], plan, seed=0, device=device, **kw)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, rows[0]
    finally:
        del model.head


def bench_rollout(model_names=("tiny-nova", "tiny-harmon"), device: str | None = None, as_json: bool = False,
                  seed: int = 0) -> dict:
    """``marpipe bench rollout``: head token-steps per image and wall time of one rollout (3 prompts x 4,
    12 of the AR steps trained) with the head on what the loss reads (``seconds``) and on every
    still-masked token (``seconds_full``, the test mode), in one process, one after the other. The
    tiny presets run at the paper's 64 AR x 25 head steps; a model spec (``nova:DIR``) at its own."""
    from marpipe.models.cost import head_rows
    from marpipe.rollout import RolloutPlan, mask_schedule

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = {"device": device, "threads": torch.get_num_threads(), "images": BENCH["group_size"] * len(PROMPTS),
              "models": {}}
    B = report["images"]
    for name in model_names:
        model = _model(name, device).eval()
        counts, T = mask_schedule(model), model.sampling.diffusion_steps
        plan = RolloutPlan.sample(len(counts), T, BENCH["train_ar_steps"], BENCH["train_diffusion_steps"], 1,
                                  seed=seed)
        _timed_rollout(model, plan, device)                     # warm-up: lazy inits, allocator
        s_full, rows_full = _timed_rollout(model, plan, device, full_head=True, sim=False)
        s_red, rows_red = _timed_rollout(model, plan, device, sim=False)
        s_sim, rows_sim = _timed_rollout(model, plan, device, sim=True)
        N = sum(counts)
        report["models"][name] = {
            "tokens": N, "ar_steps": len(counts), "diffusion_steps": T, "trained_ar_steps": list(plan.ar_steps),
            "head_token_steps": rows_red / B, "head_token_steps_sim": rows_sim / B,
            "head_token_steps_full": rows_full / B,
            "floor_token_steps": head_rows(counts, T, plan.ar_steps, "marpipe"),
            "floor_token_steps_sim": head_rows(counts, T, plan.ar_steps, "marpipe_sim"),
            "official_token_steps": 2 * N * T,
            "seconds_full": round(s_full, 3), "seconds": round(s_red, 3), "seconds_sim": round(s_sim, 3),
            "ratio_full_over_reduced": round(s_full / s_red, 3)}
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    print(f"rollout of {B} images ({len(PROMPTS)} prompts x {BENCH['group_size']}), {device}, "
          f"{report['threads']} threads; head token-steps per image (CFG)")
    print(f"  {'model':<14} {'full':>10} {'reduced':>10} {'floor':>10} {'+Sim':>10} {'official':>9} "
          f"{'s full':>8} {'s':>7} {'ratio':>6}")
    for name, r in report["models"].items():
        print(f"  {name:<14} {r['head_token_steps_full']:>10,.0f} {r['head_token_steps']:>10,.0f} "
              f"{r['floor_token_steps']:>10,} {r['head_token_steps_sim']:>10,.0f} {r['official_token_steps']:>9,} "
              f"{r['seconds_full']:>8.2f} {r['seconds']:>7.2f} {r['ratio_full_over_reduced']:>6.2f}")
    return report
