"""The GRPO trainer: generate-and-score, loss, optimizer step, checkpoints, metrics.

Runs from the CLI (``marpipe train``), from Snakemake rules, and under ``torchrun`` (gloo on CPU,
NCCL on GPUs): prompts are sharded across ranks, every group lives on one rank (so group
statistics are per prompt), and DistributedDataParallel averages the gradients during the
backward, before clipping. A resumed run is the uninterrupted one, bit for bit and byte for byte
(:class:`Trainer`; ``docs/pipeline.md``, "Byte-stable, resumable")."""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from marpipe import grpo
from marpipe.config import GRPOConfig
from marpipe.io import checkpoint as ckpt
from marpipe.io.tracking import MetricsLog, MLflowRun
from marpipe.loss import mar_grpo_loss
from marpipe.rewards import Reward
from marpipe.rollout import RolloutPlan, derive_seed, mask_schedule, rollout


class NonFiniteError(RuntimeError):
    pass


GLOBAL_RNG_STREAM = 13   # derive_seed(seed, step, 13): the global RNGs after step ``step``


def seed_global_rngs(seed: int, step: int) -> None:
    """Put every global RNG (torch CPU and all CUDA devices, numpy, ``random``) in the state
    that belongs to the end of step ``step`` (0: before the first step) of a run with ``seed``."""
    s = derive_seed(seed, step, GLOBAL_RNG_STREAM)      # < 2**32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


@dataclass
class PromptItem:
    prompt: str
    metadata: dict


def trained_parameters(model: torch.nn.Module, parts: str) -> list[torch.nn.Parameter]:
    """The parameters ``parts`` (``all`` | ``ar`` | ``head``) names."""
    return list({"all": model.parameters, "ar": model.ar_parameters, "head": model.head_parameters}[parts]())


def set_trainable(model: torch.nn.Module, parts: str) -> list[torch.nn.Parameter]:
    """Freeze everything but ``parts`` (``all`` | ``ar`` | ``head``); returns the trained parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = trained_parameters(model, parts)
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def autocast_dtype(compute: torch.dtype, device) -> torch.dtype | None:
    """The autocast dtype of a model loaded in ``compute``: that dtype where it is a half type, bf16 on
    CUDA, none (float32) elsewhere."""
    if compute in (torch.bfloat16, torch.float16):
        return compute
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def dtype_policy(model: torch.nn.Module, parts: str, device) -> dict[str, str]:
    """What :class:`Trainer` keeps in which dtype for ``model`` (as loaded), logged with the run."""
    compute = next(model.parameters()).dtype
    trained = {id(p) for p in trained_parameters(model, parts)}
    frozen = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if id(p) not in trained})
    name = str(compute).removeprefix("torch.")
    return {"compute": name, "autocast": "on" if autocast_dtype(compute, device) else "off",
            "master_weights": "float32", "optimizer_state": "float32", "frozen": ",".join(frozen) or "-",
            "kl_reference": name}


class GRPOLoss(torch.nn.Module):
    """The loss of one rollout batch as a module's ``forward``, so that torch's
    DistributedDataParallel (which syncs what a ``forward`` computed) can wrap it: the model is
    only reached through the MAR protocol's methods, never through ``model(...)``."""

    def __init__(self, model: torch.nn.Module, cfg: GRPOConfig, ref_model: torch.nn.Module | None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.ref = [ref_model]          # a list: the frozen reference is no submodule (DDP ignores it)

    def forward(self, ro, adv):
        # one optimizer step per rollout: the parameters that sampled ``ro`` are the current ones
        return mar_grpo_loss(self.model, ro, adv, self.cfg, self.ref[0], theta_is_old=True)


class Trainer:
    """One training run. Resuming gives the uninterrupted run: rollouts and batches draw from
    generators seeded by ``(seed, step, ...)``; the global RNGs, which only incidental code uses (a
    reward's dropout, a stand-in's prompt dropout), are reseeded at every step boundary
    (:func:`seed_global_rngs`); checkpoints have byte-stable files (:mod:`marpipe.io.checkpoint`);
    ``metrics.jsonl`` is cut back to the resumed step, and MLflow points of redone steps are not
    sent again (:meth:`marpipe.io.tracking.MLflowRun.log_step`)."""

    def __init__(self, model: torch.nn.Module, cfg: GRPOConfig, prompts: Sequence[PromptItem],
                 reward: Reward, out_dir: str | Path, device: str | torch.device = "cpu",
                 ref_model: torch.nn.Module | None = None, mlflow: MLflowRun | None = None,
                 progress: bool = True, keep: Callable[[list[int]], set[int]] | None = None):
        self.cfg, self.prompts, self.reward = cfg, list(prompts), reward
        self.device = torch.device(device)
        self.model = model.to(self.device)
        # the dtype policy (docs/cluster.md, "Precision"): the model computes in the dtype it was loaded in
        # (bf16 for the real adapters on CUDA) under autocast; the trained parameters are float32
        # master weights, which the optimizer updates and checkpoints hold (at lr 1e-6 an AdamW step
        # on bf16 weights is rounded away: 1.9 % of a 1024x1024 matrix moved in 10 steps); frozen
        # parts and the KL reference stay in the compute dtype
        self.compute_dtype = next(model.parameters()).dtype
        self.out_dir = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if cfg.prompts_per_step % self.world:
            raise ValueError(f"train.prompts_per_step = {cfg.prompts_per_step} must be divisible by "
                             f"the number of ranks ({self.world})")
        if cfg.beta > 0:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.to(self.device).eval().requires_grad_(False)
        else:
            self.ref_model = None
        self.params = set_trainable(self.model, cfg.trained_parts)
        for p in self.params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
        trained = {id(p) for p in self.params}
        self.trained_names = {n for n, p in self.model.named_parameters() if id(p) in trained}
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_module = GRPOLoss(self.model, cfg, self.ref_model)
        if self.world > 1:
            # torch's DDP: gradients averaged in buckets while the backward runs; parameters a step's
            # loss does not reach (e.g. a learned variance the loss never reads) are found and zeroed; buffers,
            # equal on every rank, are synced once at the start, not at each forward
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DDP(self.loss_module, device_ids=ids, forward_sync_buffers=False,
                                   find_unused_parameters=True)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        self.mlflow = mlflow
        self.progress = progress and self.rank == 0
        self.keep = keep            # checkpoints to keep besides the newest (None: all)
        self.step = 0

    # --- stages ------------------------------------------------------------------
    def autocast(self):
        dtype = autocast_dtype(self.compute_dtype, self.device)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def prompts_for_step(self, step: int) -> tuple[list[int], list[PromptItem]]:
        """The global batch of this step (same on every rank), then this rank's shard."""
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, step, 7))
        ids = torch.randperm(len(self.prompts), generator=g)[: self.cfg.prompts_per_step].tolist()
        mine = ids[self.rank:: self.world]
        return mine, [self.prompts[i] for i in mine]

    def generate_and_score(self, step: int):
        cfg, model = self.cfg, self.model
        ids, items = self.prompts_for_step(step)
        plan = RolloutPlan.sample(len(mask_schedule(model)), model.sampling.diffusion_steps,
                                  cfg.train_ar_steps, cfg.train_diffusion_steps, cfg.trajectories,
                                  seed=derive_seed(cfg.seed, step, 11), final_step=cfg.train_final_step,
                                  shared=cfg.shared_diffusion_steps, mte_scope=cfg.mte_scope)
        t0 = time.perf_counter()
        model.eval()
        with self.autocast():
            ro = rollout(model, [it.prompt for it in items], cfg.group_size, plan, seed=cfg.seed, step=step,
                         prompt_ids=ids, cfg_scale=cfg.cfg_scale, guided_logp=cfg.guided_logp,
                         mte_guided=cfg.mte_guided, device=self.device, sim=cfg.sim)
        t1 = time.perf_counter()
        meta = [it.metadata for it in items for _ in range(cfg.group_size)]
        with torch.no_grad():
            rewards = self.reward(ro.images.float(), ro.prompts, meta).float().to(self.device)
        adv = grpo.group_advantages(rewards, cfg.group_size)
        return ro, rewards, adv, {"time_rollout": t1 - t0, "time_reward": time.perf_counter() - t1}

    def compute_loss(self, ro, adv):
        self.model.train()
        with self.autocast():
            return self.loss_module(ro, adv)

    def train_step(self, step: int) -> dict:
        ro, rewards, adv, times = self.generate_and_score(step)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.compute_loss(ro, adv)
        out.loss.backward()                 # under DDP: the gradients are averaged over the ranks here
        for p in self.params:  # frozen-by-graph params (no path to the loss) get zero grads
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        t1 = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        finite = math.isfinite(out.stats["loss"]) and bool(torch.isfinite(grad_norm))
        if not finite:
            msg = (f"step {step}: non-finite {'loss' if not math.isfinite(out.stats['loss']) else 'gradients'} "
                   f"(loss={out.stats['loss']}, grad_norm={float(grad_norm)}); lower train.lr or set "
                   f"train.skip_nonfinite: true to skip such steps")
            if not self.cfg.skip_nonfinite:
                raise NonFiniteError(msg)
            print(f"[marpipe] skipping {msg}")
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
        stats = self._gather({"reward_mean": rewards.mean(), "reward_std": rewards.std(correction=0),
                              **{k: torch.tensor(v) for k, v in out.stats.items()}})
        return {"step": step, **stats, "grad_norm": float(grad_norm), "skipped": int(not finite),
                **times, "time_loss": t1 - t0, "time_optim": time.perf_counter() - t1}

    def _gather(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        vec = torch.stack([v.float().to(self.device) for v in values.values()])
        if self.world > 1:
            dist.all_reduce(vec)
            vec /= self.world
        return dict(zip(values, vec.tolist()))

    # --- loop ----------------------------------------------------------------------
    def save(self, step: int) -> Path | None:
        if self.rank != 0:
            return None
        path = ckpt.save_checkpoint(self.out_dir / "checkpoints", step, self.model, self.optimizer,
                                    meta={"config": self.cfg.to_dict()}, trained=self.trained_names)
        if self.keep is not None:
            ckpt.prune(self.out_dir / "checkpoints", self.keep)
        return path

    def resume(self) -> int:
        """Load the newest valid checkpoint; returns its step (0 when there is none)."""
        path = ckpt.latest_valid(self.out_dir / "checkpoints")
        if path is None:
            return 0
        return ckpt.load_checkpoint(path, self.model, self.optimizer)["step"]

    def train(self, resume: bool = False, steps: int | None = None) -> list[dict]:
        """Steps ``start+1 .. end``, ``start`` being the resumed checkpoint's step (or 0).

        ``metrics.jsonl`` is first cut back to ``start`` (also when no checkpoint was found,
        or when not resuming): rows of steps that are about to be redone go, so the file
        holds exactly one row per step. Leaves the global RNGs as :func:`seed_global_rngs`
        puts them for the last step run."""
        start = self.resume() if resume else 0
        end = self.cfg.steps if steps is None else steps
        if self.rank == 0:
            self.metrics.truncate_after(start)
        seed_global_rngs(self.cfg.seed, start)
        history = []
        bar = tqdm(range(start + 1, end + 1), disable=not self.progress, desc="grpo", dynamic_ncols=True)
        for step in bar:
            row = self.train_step(step)
            seed_global_rngs(self.cfg.seed, step)
            history.append(row)
            if self.rank == 0:
                self.metrics.append(row)
                if self.mlflow is not None:
                    self.mlflow.log_step(step, row)
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.2e}")
            if step % self.cfg.save_every == 0 or step == end:
                self.save(step)
        return history
