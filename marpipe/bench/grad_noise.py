"""``marpipe bench grad-noise``: the diffusion head's share of the policy-gradient noise (the paper's
Sec. 3.2-3.3), measured at one parameter value: one training batch is recorded as the trainer records
it (:func:`record`), replayed ``R`` times with its AR decisions held and only the head's noise
resampled (:func:`replay`), and every row's (variant's) loss backpropagated on every replay; per row
and parameter block (the AR model, the head), the noise-to-signal ratio ``tr(Cov) / ||mean||^2`` and
the mean cosine between the gradients of two draws (:class:`GradStats`). What is held, what is
resampled and what it measured: docs/results.md.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from marpipe import grpo
from marpipe.bench.reward import RISE
from marpipe.bench.train import BENCH, PROMPTS, VARIANTS
from marpipe.config import ConfigError, GRPOConfig
from marpipe.loss import mar_grpo_loss
from marpipe.rollout import Rollout, RolloutPlan, derive_seed, mask_schedule, rollout
from marpipe.trainer import seed_global_rngs

S_VALUES = (1, 2, 3, 5, 8)
TOP_K_VALUES = (0.1, 0.3, 1.0)
BLOCKS = ("ar", "head")
REWARD = "redness"          # needs no weights: any model, any size
STEP = 1                    # the trainer's first step: seeds the plan and the rollout's noise


# --- statistics of a [R, P] matrix of flattened gradients (pure) ------------------------------
def _rows(grads: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grads).detach().double()
    if g.dim() != 2 or g.shape[0] < 2:
        raise ValueError(f"need a [R, P] matrix with R >= 2 draws, got shape {tuple(g.shape)}")
    return g


def trace_covariance(grads: torch.Tensor) -> float:
    """``tr(Cov)``: the summed per-coordinate variance over the ``R`` rows (unbiased, ``R - 1``)."""
    g = _rows(grads)
    c = g - g.mean(0)
    return float((c * c).sum() / (g.shape[0] - 1))


def signal_power(grads: torch.Tensor, debiased: bool = True) -> float:
    """``||mean||^2``: unbiased (``debiased``: the mean inner product of two different rows,
    ``||g_bar||^2 - tr(Cov) / R``, may be <= 0) or the plain ``||g_bar||^2``."""
    g = _rows(grads)
    plain = float(g.mean(0).square().sum())
    return plain - trace_covariance(g) / g.shape[0] if debiased else plain


def _ratio(noise: float, signal: float) -> float:
    if noise == 0.0:
        return 0.0 if signal > 0 else math.nan
    return noise / signal if signal > 0 else math.inf


def noise_to_signal(grads: torch.Tensor, debiased: bool = True) -> float:
    """``tr(Cov) / ||mean||^2`` of the rows of ``grads [R, P]`` (:func:`signal_power`); ``inf``
    where the signal estimate is not positive, ``nan`` for all-zero rows."""
    return _ratio(trace_covariance(grads), signal_power(grads, debiased))


def mean_pairwise_cosine(grads: torch.Tensor) -> float:
    """Mean over the ``R (R - 1) / 2`` pairs of different rows of their cosine similarity, from
    the sum of the unit rows: ``(||sum u_i||^2 - sum ||u_i||^2) / (R (R - 1))``. A zero row has
    cosine 0 with every other row."""
    g = _rows(grads)
    norm = g.norm(dim=1, keepdim=True)
    u = torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    R = g.shape[0]
    return float((u.sum(0).square().sum() - u.square().sum()) / (R * (R - 1)))


class GradStats:
    """The statistics above, streamed one gradient at a time (memory: two vectors of ``P``).

    Welford's update for the mean and ``tr(Cov)`` (exactly 0 for identical draws), and the sum of
    the unit vectors for the cosines; float64 on the gradients' device.
    """

    def __init__(self):
        self.n, self.m2, self.units = 0, 0.0, 0
        self.mean = self.unit_sum = None

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach().reshape(-1).double()
        if self.mean is None:
            self.mean, self.unit_sum = torch.zeros_like(g), torch.zeros_like(g)
        self.n += 1
        delta = g - self.mean
        self.mean.add_(delta, alpha=1.0 / self.n)
        self.m2 += float(torch.dot(delta, g - self.mean))
        norm = float(torch.linalg.vector_norm(g))
        if norm > 0:
            self.unit_sum.add_(g, alpha=1.0 / norm)
            self.units += 1                         # ||u||^2 = 1

    def result(self) -> dict:
        R = self.n
        if R < 2:
            raise ValueError("need R >= 2 draws")
        trace = max(self.m2, 0.0) / (R - 1)
        plain = float(self.mean.square().sum())
        signal = plain - trace / R
        return {"noise_to_signal": _ratio(trace, signal), "mean_cosine": float(
                    (torch.dot(self.unit_sum, self.unit_sum) - self.units) / (R * (R - 1))),
                "trace_cov": trace, "signal": signal, "noise_to_signal_plain": _ratio(trace, plain),
                "mean_norm": math.sqrt(plain), "parameters": int(self.mean.numel())}


# --- rows ----------------------------------------------------------------------------------
def row_variants(S_values: Sequence[int] = S_VALUES, top_k_values: Sequence[float] = TOP_K_VALUES) -> dict:
    """``key -> (label, GRPOConfig overrides)``: GRPO, +Fix Decoder, the +MTE grid, +Sim."""
    rows = {"grpo": ("GRPO (end to end)", dict(VARIANTS["grpo"])),
            "fix_decoder": ("+Fix Decoder", dict(VARIANTS["fix_decoder"]))}
    for s in S_values:
        for k in top_k_values:
            rows[f"mte_S{s}_k{k:g}"] = (f"+MTE S={s} top_k={k:g}", {**VARIANTS["mte"], "S": s, "top_k": k})
    rows["sim"] = ("+Sim", dict(VARIANTS["sim"]))
    return rows


# --- record, replay, gradients ---------------------------------------------------------------
@dataclass
class Recorded:
    """One rollout batch as the trainer records it, with its rewards and advantages."""
    rollout: Rollout
    prompts: list[str]          # the batch's prompts (each sampled ``group_size`` times)
    group_size: int
    seed: int
    rewards: torch.Tensor
    advantages: torch.Tensor


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else nullcontext()


def _sampling_kwargs(cfg: GRPOConfig) -> dict:
    return dict(cfg_scale=cfg.cfg_scale, guided_logp=cfg.guided_logp, mte_guided=cfg.mte_guided)


def record(model, prompts: Sequence[str], cfg: GRPOConfig, reward, seed: int, device="cpu") -> Recorded:
    """The trainer's generate-and-score for ``prompts`` (one trajectory: MTE's come with the replays)."""
    plan = RolloutPlan.sample(len(mask_schedule(model)), model.sampling.diffusion_steps, cfg.train_ar_steps,
                              cfg.train_diffusion_steps, 1, seed=derive_seed(seed, STEP, 11),
                              final_step=cfg.train_final_step, shared=cfg.shared_diffusion_steps,
                              mte_scope=cfg.mte_scope)
    model.eval()
    with _autocast(device):
        ro = rollout(model, list(prompts), cfg.group_size, plan, seed=seed, step=STEP, device=device,
                     sim=True, **_sampling_kwargs(cfg))
    with torch.no_grad():
        rewards = reward(ro.images.float(), ro.prompts, [{} for _ in ro.prompts]).float().to(device)
    return Recorded(ro, list(prompts), cfg.group_size, seed, rewards, grpo.group_advantages(rewards, cfg.group_size))


def replay(model, rec: Recorded, cfg: GRPOConfig, trajectories: int, noise_draw: int | None,
           device="cpu") -> Rollout:
    """``rec``'s rollout with its AR decisions held and the head's noise from stream ``noise_draw``
    (``None``: the recorded noise, which gives the recorded rollout back), ``trajectories`` head
    trajectories per token; Sim's inputs (the per-step ``x0``) are the recorded ones."""
    ro = rec.rollout
    plan = replace(ro.plan, trajectories=trajectories)
    model.eval()
    with _autocast(device):
        new = rollout(model, rec.prompts, rec.group_size, plan, seed=rec.seed, step=STEP, device=device,
                      forced_latents=ro.latents, noise_draw=noise_draw, sim=False, **_sampling_kwargs(cfg))
    return replace(new, x0=ro.x0, x0_before=ro.x0_before, has_before=ro.has_before)


def with_trajectories(ro: Rollout, S: int) -> Rollout:
    """The first ``S`` head trajectories of ``ro`` (trajectory 0, the rollout's own, and ``S - 1``
    extra ones): what a rollout recorded with ``S`` trajectories holds."""
    if S == ro.plan.trajectories:
        return ro
    if not 1 <= S <= ro.plan.trajectories:
        raise ValueError(f"{S} trajectories of a rollout with {ro.plan.trajectories}")
    step_scope = ro.x0_step is not None
    return replace(ro, plan=replace(ro.plan, trajectories=S), x_t=ro.x_t[:, :S], x_prev=ro.x_prev[:, :S],
                   log_var=ro.log_var[:, :S], old_log_prob=ro.old_log_prob[:, :S],
                   x0_final=ro.x0_final if step_scope else ro.x0_final[:S],
                   x0_step=ro.x0_step[:, :S] if step_scope and S > 1 else None)


def _flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def policy_gradient(model, ro: Rollout, advantages: torch.Tensor, cfg: GRPOConfig, blocks: dict,
                    device="cpu") -> dict[str, torch.Tensor]:
    """The trainer's loss for ``ro`` under ``cfg``, backpropagated: ``block -> flat gradient``."""
    model.zero_grad(set_to_none=True)
    model.train()
    with _autocast(device):
        out = mar_grpo_loss(model, ro, advantages, cfg, ref_model=None, theta_is_old=True)
    out.loss.backward()
    grads = {b: _flat(ps) for b, ps in blocks.items()}
    model.zero_grad(set_to_none=True)
    return grads


def parameter_blocks(model) -> dict[str, list[torch.nn.Parameter]]:
    """The AR and head parameters, the only ones that get gradients here."""
    blocks = {"ar": list(model.ar_parameters()), "head": list(model.head_parameters())}
    ids = [id(p) for ps in blocks.values() for p in ps]
    if len(ids) != len(set(ids)):
        raise ValueError("ar_parameters() and head_parameters() overlap")
    for p in model.parameters():
        p.requires_grad_(False)
    for ps in blocks.values():
        for p in ps:
            p.requires_grad_(True)
    return blocks


def measure(model, rec: Recorded, configs: dict[str, GRPOConfig], draws: int,
            noise_draws: Sequence[int] | None = None, device="cpu") -> dict[str, dict[str, GradStats]]:
    """``row -> block -> GradStats`` over ``draws`` replays of ``rec``, shared by all rows.

    ``noise_draws``: the head-noise stream of each draw (default ``0 .. draws-1``); the same
    stream for every draw makes the head deterministic across draws (a test)."""
    noise_draws = list(range(draws)) if noise_draws is None else list(noise_draws)
    if len(noise_draws) != draws:
        raise ValueError(f"{len(noise_draws)} noise streams for {draws} draws")
    first = next(iter(configs.values()))
    for c in configs.values():
        if _sampling_kwargs(c) != _sampling_kwargs(first) or c.mte_scope != first.mte_scope:
            raise ValueError("the rows must share the rollout settings (one preset)")
    S_max = max(c.trajectories for c in configs.values())
    blocks = parameter_blocks(model)
    replays = [replay(model, rec, first, S_max, d, device) for d in noise_draws]
    stats, seen = {}, {}
    for key, cfg in configs.items():
        # rows whose loss is the same (GRPO and +Fix Decoder: fix_decoder only freezes the head) share it
        loss = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("fix_decoder", "trainable")},
                          sort_keys=True, default=str)
        if loss in seen:
            stats[key] = stats[seen[loss]]
            continue
        seen[loss] = key
        stats[key] = {b: GradStats() for b in blocks}
        for ro in replays:
            seed_global_rngs(rec.seed, STEP)        # incidental randomness (a stand-in's dropout): held
            for b, g in policy_gradient(model, with_trajectories(ro, cfg.trajectories), rec.advantages, cfg,
                                        blocks, device).items():
                stats[key][b].add(g)
    return stats


# --- the bench --------------------------------------------------------------------------------
def is_weights_file(model: str) -> bool:
    """A model spec that is a trained tiny model's weights (``FOLDER/model.safetensors``)."""
    return model.endswith(".safetensors")


def load(model: str, device) -> tuple[torch.nn.Module, str]:
    """A tiny preset (random initialisation, a head that uses ``z``), a trained tiny model's weights
    file or any other :func:`~marpipe.models.registry.load_model` spec (``nova:DIR``, ``harmon:DIR``)."""
    from marpipe.models.registry import TINY, load_model
    if is_weights_file(model):
        return load_model(model, device=device), model
    if model in TINY:
        from marpipe.models.tiny import TinyMAR, TinyMARConfig
        torch.manual_seed(0)
        return TinyMAR(TinyMARConfig.preset(model, zero_init=False)).to(device), f"{model} (random init)"
    from marpipe.models.conformance import zero_init_probe
    return zero_init_probe(load_model(model, device=device), device)[0], model


def _finite_or_none(v):
    """JSON has no inf / nan: ``null`` (an infinite ratio: the signal estimate is not positive)."""
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def bench_grad_noise(model: str = "tiny-nova", draws: int = 8, preset: str = "reference", seed: int = 0,
                     device: str | None = None, as_json: bool = False, prompts: int | None = None,
                     S_values: Sequence[int] = S_VALUES, top_k_values: Sequence[float] = TOP_K_VALUES) -> dict:
    """Record one batch of ``model`` (a spec, :func:`load`; ``prompts`` prompts x 4 images, default 3
    for a tiny model, 1 for a real one), replay it ``draws`` times with fresh head noise, and report
    each row's gradient noise for the AR and the head parameters (module docstring)."""
    from marpipe.models.registry import TINY, model_family
    from marpipe.rewards import build_reward

    if draws < 2:
        raise ConfigError(f"--draws {draws}: need at least 2")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    net, name = load(model, device)
    family = model_family(net)
    tiny = is_weights_file(model) or model in TINY
    # tiny: the small world's training batch (3 prompts x 4, 2 of 8 AR x 4 of 10 head steps);
    # a real model: one prompt x 4 at the paper's 12 x 10 trained steps
    base = dict(RISE) if tiny else dict(BENCH, prompts_per_step=1)
    base = {k: base[k] for k in ("group_size", "prompts_per_step", "train_ar_steps", "train_diffusion_steps")}
    if prompts is not None:
        if not 1 <= prompts <= len(PROMPTS):
            raise ConfigError(f"--prompts {prompts}: use 1 to {len(PROMPTS)}")
        base["prompts_per_step"] = prompts
    batch = PROMPTS[: base["prompts_per_step"]]
    rows = row_variants(S_values, top_k_values)
    configs = {k: GRPOConfig(**base, **over, preset=preset, model_family=family, seed=seed)
               for k, (_, over) in rows.items()}
    rec = record(net, batch, configs["grpo"], build_reward(REWARD), seed, device)
    t1 = time.perf_counter()
    stats = measure(net, rec, configs, draws, device=device)
    t2 = time.perf_counter()
    report = {
        "model": name, "model_family": family, "preset": preset, "draws": draws, "seed": seed,
        "device": str(device), "threads": torch.get_num_threads(), "reward": REWARD,
        "prompts": len(batch), "group_size": base["group_size"],
        "ar_steps": len(mask_schedule(net)), "diffusion_steps": net.sampling.diffusion_steps,
        "train_ar_steps": len(rec.rollout.plan.ar_steps),
        "train_diffusion_steps": int(rec.rollout.plan.diffusion_steps.shape[1]),
        "rewards": rec.rewards.tolist(), "advantages": rec.advantages.tolist(),
        "held_fixed": "prompts, token order, accepted tokens (canvases, image, reward), advantages, plan, "
                      "Sim's kappa, theta",
        "resampled": "the head's noise: the rollout's own chains and MTE's extra trajectories (hence M)",
        "rows": [], "time_s": {"record": round(t1 - t0, 2), "draws": round(t2 - t1, 2)},
    }
    for key, (label, _) in rows.items():
        cfg = configs[key]
        trained = {"ar": cfg.trained_parts in ("all", "ar"), "head": cfg.trained_parts in ("all", "head")}
        label = f"{label} S={cfg.S} top_k={cfg.top_k:g}" if key == "sim" else label    # the preset's S
        row = {"key": key, "label": label, "S": cfg.S if cfg.mte else None, "top_k": cfg.top_k if cfg.mte else None,
               "trajectories": cfg.trajectories, "trained": trained}
        for b in BLOCKS:
            row[b] = stats[key][b].result()
        report["rows"].append(row)
    if as_json:
        print(json.dumps(_finite_or_none(report), indent=2))
    else:
        print_table(report)
    return report


CSV_COLUMNS = ["row", "S", "top_k", "trajectories", "block", "trained", "noise_to_signal", "mean_cosine",
               "trace_cov", "signal", "mean_norm"]


def write_csv(report: dict, path: str | Path) -> Path:
    """The report's rows as CSV, a line per (row, block): what the study's report shows."""
    import csv
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for row in report["rows"]:
            for b in BLOCKS:
                r = row[b]
                w.writerow([row["label"], row["S"] or "", row["top_k"] or "", row["trajectories"], b,
                            int(row["trained"][b])] + [f"{r[k]:.6g}" for k in CSV_COLUMNS[6:]])
    return path


def _fmt(v, width: int, frozen: bool) -> str:
    s = f"{v:.3g}"
    return f"{'(' + s + ')' if frozen else s:>{width}}"


def print_table(report: dict) -> None:
    r = report
    print(f"grad-noise: {r['model']} ({r['model_family']}), preset {r['preset']}, {r['draws']} head-noise draws, "
          f"seed {r['seed']}, {r['device']} ({r['threads']} threads)")
    print(f"  one batch of {r['prompts']} prompts x {r['group_size']} ({r['reward']} reward), "
          f"{r['train_ar_steps']} of {r['ar_steps']} AR steps x {r['train_diffusion_steps']} of "
          f"{r['diffusion_steps']} head steps trained")
    print(f"  held fixed: {r['held_fixed']}")
    print(f"  resampled:  {r['resampled']}")
    print("  N/S = tr(Cov) / ||mean||^2 (unbiased), cos = mean cosine between two draws' gradients; "
          "(..) = computed, not applied (frozen)")
    first = r["rows"][0]
    print(f"  {'':<24} {'AR (' + format(first['ar']['parameters'], ',') + ' params)':>22}   "
          f"{'head (' + format(first['head']['parameters'], ',') + ' params)':>22}")
    print(f"  {'row':<24} {'N/S':>10} {'cos':>10}   {'N/S':>10} {'cos':>10}")
    for row in r["rows"]:
        cells = []
        for b in BLOCKS:
            frozen = not row["trained"][b]
            cells.append(_fmt(row[b]["noise_to_signal"], 10, frozen) + " " + _fmt(row[b]["mean_cosine"], 10, frozen))
        print(f"  {row['label']:<24} {cells[0]}   {cells[1]}")
    t = r["time_s"]
    print(f"  time: record {t['record']:.1f} s, draws and gradients {t['draws']:.1f} s")
