"""``marpipe bench train-step`` and ``marpipe bench rollout``: the time and memory of a GRPO step per
variant (all variants in one process, interleaved step by step, ratios as medians of per-step ratios)
and of one rollout with the head on what the loss reads or on every masked token, on the tiny presets
or any model spec; beside them the real NOVA's and Harmon's rollout and step costs computed from their
configs (:mod:`marpipe.models.cost`). How to run them and what they measured: docs/development.md,
docs/cluster.md.
"""
from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import statistics
import tempfile
from collections.abc import Sequence

import torch

from marpipe.bench.memory import vm_kb
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


def _peak_rss_child(model_name, variant, device, preset, preload, q):
    """Peak RSS growth of one training step over the process after set-up (Linux)."""
    for module in preload:
        importlib.import_module(module)
    with tempfile.TemporaryDirectory() as d:
        t = _trainer(model_name, variant, device, d, preset)
        t.train_step(0)                       # allocator warm-up, lazy inits
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # reset the peak (VmHWM) to the current RSS
        base = vm_kb("VmRSS")
        t.train_step(1)
        q.put((vm_kb("VmHWM") - base) / 1024)


def peak_memory_mb(model_name: str, variant: str, device: str, preset: str = "reference",
                   preload: Sequence[str] = ()) -> float:
    """Peak memory of one training step: CUDA's peak allocation on a GPU; on a CPU the growth of the
    resident set during the step (Linux ``VmHWM`` after a reset), in a fresh child process, which
    imports the modules ``preload`` first (those that register ``model_name``'s spec)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as d:
            _trainer(model_name, variant, device, d, preset).train_step(1)
        return torch.cuda.max_memory_allocated() / 2**20
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_rss_child, args=(model_name, variant, device, preset, tuple(preload), q))
    p.start()
    p.join()
    if p.exitcode:
        raise RuntimeError(f"peak memory of {model_name} {variant}: the child process failed (exit code "
                           f"{p.exitcode}, its traceback above)")
    return q.get()


def bench_train_step(steps: int = 5, as_json: bool = False, model_names=("tiny-nova", "tiny-harmon"),
                     device: str | None = None, preset: str = "reference", preload: Sequence[str] = ()) -> dict:
    """Median step time and peak memory per variant of each model (a tiny preset or a model spec). The
    variants run side by side, interleaved step by step (the order reversed on every other step), and
    each ratio is the median over steps of the per-step ratio of two runs measured moments apart,
    which cancels the slow drift of a shared machine's load. ``preset``: how the loss is assembled
    (``train.preset``; MTE's extra trajectories: ``reference`` once per image, ``paper`` at every
    trained AR step); ``preload``: modules the CPU's memory child imports (:func:`peak_memory_mb`)."""
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
            "peak_memory_mb": {v: round(peak_memory_mb(name, v, device, preset, preload), 1) for v in VARIANTS},
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
