"""MAR rollouts with classifier-free guidance, recording what the GRPO loss needs.

One rollout samples ``B`` images (``G`` per prompt) through ``K`` mask steps; for the AR and head
steps chosen up front (:class:`RolloutPlan`, paper Sec. 3.2) it records the known-token canvas,
the tokens each step predicts and accepts, ``x_t``, ``x_{t-1}``, the log variance and the log-prob
of each transition, and, with ``S > 1`` (MTE), the extra head trajectories Eq. 9-10 use. All
randomness comes from per-prompt generators seeded by ``(seed, step, prompt index)``, so a rollout
does not depend on how prompts are split across batches or ranks. Paper vs reference code:
``docs/method.md``."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from marpipe import diffusion as D
from marpipe.grpo import gaussian_log_prob
from marpipe.models.protocol import MARModel, Prompts


def mask_schedule(model: MARModel) -> list[int]:
    """Tokens made known at each AR step when ``model`` samples with its ``sampling.ar_steps``:
    the model's own (official) schedule; its length is the number of AR steps that run."""
    return list(model.mask_counts(model.sampling.ar_steps))


#: on a CPU a reduced head batch is padded to a multiple of this many rows per CFG branch: PyTorch's
#: vectorised CPU kernels compute the last ``numel % 32`` elements of an elementwise op (SiLU's) with
#: the scalar code, which rounds differently, so a token must land there in every batch shape or none
CPU_ROW_MULTIPLE = 32


def head_tokens(counts: Sequence[int], trained: Sequence[int], sim: bool = True) -> list[int]:
    """Tokens per image whose head chain a rollout runs at each AR step (one CFG branch): every
    still-masked token at a trained step and, with ``sim``, at the step before one; elsewhere the
    ones the step accepts, as the official samplers do. The noise is drawn as if every still-masked
    token ran (one ``randn`` per prompt and head step) and the accepted tokens' part is kept, so
    every value is the one the full computation (``full_head=True``) gives."""
    trained, out, masked = set(trained), [], sum(counts)
    for k, c in enumerate(counts):
        out.append(masked if k in trained or (sim and k + 1 in trained) else c)
        masked -= c
    return out


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class RolloutPlan:
    """Which steps are trained, chosen before sampling so nothing else is stored."""
    ar_steps: tuple[int, ...]          # J trained AR steps (sorted)
    diffusion_steps: torch.Tensor      # [J, T'] trained head steps for each AR step
    trajectories: int = 1              # head trajectories per token: the rollout's + extra ones (MTE)
    # MTE's S - 1 extra trajectories: "image" (reference code) once per image after the rollout, each
    # token from fresh noise under the z it was accepted with, their final x0 giving Eq. 9's
    # uncertainty, at (S-1)/(2K) of the rollout's head passes; "step" (paper, Alg. 2 l. 8-9) at each
    # trained AR step from that step's condition Z^k, for the tokens it predicts, log-probs recorded
    mte_scope: str = "image"
    seed: int = 0                      # seeds what the loss draws at random (top_k_random)

    @classmethod
    def sample(cls, ar_steps: int, diffusion_steps: int, train_ar: int, train_diffusion: int,
               trajectories: int, seed: int, final_step: bool = False, shared: bool = False,
               mte_scope: str = "image") -> RolloutPlan:
        """Random ``train_ar`` AR steps and, for each, ``train_diffusion`` head steps
        (the last head step only if ``final_step``; the same ones for every AR step if ``shared``)."""
        if mte_scope not in ("image", "step"):
            raise ValueError(f"mte_scope {mte_scope!r}: use 'image' or 'step'")
        g = torch.Generator().manual_seed(seed)
        j = min(train_ar, ar_steps)
        steps = torch.randperm(ar_steps, generator=g)[:j].sort().values
        pool = diffusion_steps if final_step or diffusion_steps == 1 else diffusion_steps - 1
        t = min(train_diffusion, pool)
        if shared:
            diff = torch.randperm(pool, generator=g)[:t].sort().values.expand(j, t).clone()
        else:
            diff = torch.stack([torch.randperm(pool, generator=g)[:t].sort().values for _ in range(j)])
        return cls(tuple(int(s) for s in steps), diff.reshape(j, t), trajectories, mte_scope, seed)


@dataclass
class Rollout:
    """Everything the loss needs; ``J`` trained AR steps, ``T'`` trained head steps."""
    prompts: list[str]
    images: torch.Tensor        # [B,3,H,W]
    latents: torch.Tensor       # [B,N,C] final tokens
    plan: RolloutPlan
    canvas: torch.Tensor        # [J,B,N,C] known-token values before step m
    known: torch.Tensor         # [J,B,N] bool, known before step m
    accepted: torch.Tensor      # [J,B,N] bool, accepted at step m
    x_t: torch.Tensor           # [J,S,T',B,N,C] trajectory 0: the rollout's; 1..S-1: MTE's extra ones
    x_prev: torch.Tensor        # [J,S,T',B,N,C]
    log_var: torch.Tensor       # [J,S,T',B,N,C] variance used at sampling (recorded)
    old_log_prob: torch.Tensor  # [J,S,T',B,N] log-prob of each transition (sum over C); 0 for the extra
                                # trajectories of mte_scope "image", sampled under another condition (loss.py)
    x0: torch.Tensor            # [J,B,N,C] the rollout's x0 prediction at step m
    x0_before: torch.Tensor     # [J,B,N,C] its x0 prediction at step m-1 (zeros at m=0)
    has_before: torch.Tensor    # [J] bool
    x0_final: torch.Tensor      # [S,B,N,C] each trajectory's final tokens (0: ``latents``); mte_scope
                                # "step": [1,B,N,C], the rollout's only
    x0_step: torch.Tensor | None = None  # mte_scope "step": [J,S,B,N,C] each trajectory's x0 at step m

    @property
    def predicted(self) -> torch.Tensor:
        """[J,B,N] tokens the step predicts: all tokens not yet known (the loss covers these)."""
        return ~self.known


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = -t.shape[0] % multiple
    return t if not extra else torch.cat([t, t.new_zeros(extra, *t.shape[1:])])


def _head_step(model: MARModel, x, step: int, z_cond, z_uncond=None, cfg_scale: float = 1.0,
               guided_logp: bool = False, pad: int = 1):
    """One head transition for ``x [..., C]``, with CFG when ``z_uncond`` is given; the head's
    batch padded with zero rows to a multiple of ``pad`` rows per branch.

    Returns mean, log_var and the mean used for log-probs.
    """
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    M = flat.shape[0]
    zc = z_cond.reshape(-1, z_cond.shape[-1])
    xp, zc = _pad_rows(flat, pad), _pad_rows(zc, pad)
    st = torch.full((xp.shape[0],), step, dtype=torch.long, device=x.device)
    if z_uncond is None:
        eps_c, v = model.head(xp, st, zc)
        eps_g = eps_c = eps_c[:M]
        v = None if v is None else v[:M]
    else:
        zu = _pad_rows(z_uncond.reshape(-1, z_uncond.shape[-1]), pad)
        eps, v = model.head(torch.cat([xp, xp]), torch.cat([st, st]), torch.cat([zc, zu]))
        eps_c, eps_u = (e[:M] for e in eps.chunk(2))
        eps_g = eps_u + cfg_scale * (eps_c - eps_u)
        v = None if v is None else v.chunk(2)[0][:M]
    st = st[:M]
    mean = D.posterior_mean(model.schedule, st, flat, eps_g)
    log_var = D.posterior_log_var(model.schedule, st, flat, v)
    logp_mean = mean if guided_logp or z_uncond is None else D.posterior_mean(model.schedule, st, flat, eps_c)
    return mean.reshape(shape), log_var.reshape(shape), logp_mean.reshape(shape)


def _sample_chain(model: MARModel, noise: torch.Tensor, z_cond, z_uncond, cfg_scale: float, guided_logp: bool,
                  record, pad: int = 1):
    """Run the head's ``T`` transitions from ``noise[0]``, adding ``noise[t + 1]`` after transition
    ``t``; ``record(t, x_t, x_prev, log_var, logp_mean)``."""
    T = model.sampling.diffusion_steps
    x = noise[0]
    for t in range(T):
        mean, log_var, logp_mean = _head_step(model, x, t, z_cond, z_uncond, cfg_scale, guided_logp, pad)
        # the last transition adds no noise (DDPM / MAR p_sample at t = 0)
        x_next = mean + torch.exp(0.5 * log_var) * noise[t + 1] if t < T - 1 else mean
        record(t, x, x_next, log_var, logp_mean)
        x = x_next
    return x


@torch.no_grad()
def rollout(model: MARModel, prompts: Sequence[str], group_size: int, plan: RolloutPlan,
            seed: int, step: int = 0, prompt_ids: Sequence[int] | None = None,
            cfg_scale: float | None = None, guided_logp: bool = False, mte_guided: bool = False,
            device: torch.device | str = "cpu", forced_latents: torch.Tensor | None = None,
            noise_draw: int | None = None, sim: bool = True, full_head: bool = False) -> Rollout:
    """Sample ``group_size`` images for each prompt and record the trained steps.

    ``prompt_ids`` are the prompts' global indices (they seed the per-prompt noise);
    defaults to ``0..P-1``. ``mte_guided``: the extra trajectories use the rollout's CFG.
    ``sim``: record ``x0_before`` (Sim's ``x0`` at ``m - 1``; without it, only where step
    ``m - 1`` is trained too, ``has_before`` says where). ``full_head``: run the head on every
    still-masked token at every step (the same results, at the cost of the reference trainers).

    Replaying a recorded rollout with its AR decisions held (:mod:`marpipe.bench.grad_noise`):
    ``forced_latents [B,N,C]`` (its final tokens): every step accepts these values instead of
    the head's output, so the canvases and the final image are the recorded ones (the token
    order is drawn as always, from the same seed), and the head only runs at the trained steps;
    ``noise_draw``: the head's noise (the rollout's chains and MTE's extra ones) comes from a
    fresh stream with that number instead.
    """
    cfg_scale = model.sampling.cfg_scale if cfg_scale is None else cfg_scale
    prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
    G, P = group_size, len(prompts)
    B, N, C = P * G, model.num_tokens, model.token_dim
    counts = mask_schedule(model)
    K, S, T = len(counts), plan.trajectories, model.sampling.diffusion_steps
    gens = [torch.Generator().manual_seed(derive_seed(seed, step, pid)) for pid in prompt_ids]
    mte_gens = [torch.Generator().manual_seed(derive_seed(seed, step, pid, 1)) for pid in prompt_ids]
    pad = CPU_ROW_MULTIPLE if torch.device(device).type == "cpu" else 1

    def noise(generators, lead: tuple, tokens: int, keep: int | None = None) -> torch.Tensor:
        """``[T, *lead, B, keep, C]``: ``T`` draws over ``tokens`` tokens, the first ``keep`` kept."""
        keep = tokens if keep is None else keep
        draws = torch.stack([torch.cat([torch.randn(*lead, G, tokens, C, generator=g) for g in generators],
                                       dim=-3)[..., :keep, :] for _ in range(T)])
        if torch.device(device).type == "cuda":
            return draws.pin_memory().to(device, non_blocking=True)
        return draws.to(device)

    flat_prompts = [p for p in prompts for _ in range(G)]
    cond = model.encode_prompts(prompts).repeat_interleave(G)
    both = Prompts.cat([cond, model.encode_negative(B)])
    orders = torch.cat([torch.stack([torch.randperm(N, generator=g) for _ in range(G)]) for g in gens]).to(device)
    if noise_draw is not None:      # after the order: a fresh stream for the head's noise only
        gens = [torch.Generator().manual_seed(derive_seed(seed, step, pid, 2, noise_draw)) for pid in prompt_ids]
        mte_gens = [torch.Generator().manual_seed(derive_seed(seed, step, pid, 3, noise_draw)) for pid in prompt_ids]

    J, Tp = len(plan.ar_steps), plan.diffusion_steps.shape[1] if plan.ar_steps else 0
    zeros = lambda *shape, **kw: torch.zeros(*shape, device=device, **kw)  # noqa: E731
    rec = dict(
        canvas=zeros(J, B, N, C), known=zeros(J, B, N, dtype=torch.bool), accepted=zeros(J, B, N, dtype=torch.bool),
        x_t=zeros(J, S, Tp, B, N, C), x_prev=zeros(J, S, Tp, B, N, C), log_var=zeros(J, S, Tp, B, N, C),
        old_log_prob=zeros(J, S, Tp, B, N), x0=zeros(J, B, N, C), x0_before=zeros(J, B, N, C),
        has_before=zeros(J, dtype=torch.bool), x0_final=zeros(S, B, N, C))
    per_step = S > 1 and plan.mte_scope == "step"
    if per_step:
        rec["x0_step"], rec["x0_final"] = zeros(J, S, B, N, C), zeros(1, B, N, C)
    slot = {m: j for j, m in enumerate(plan.ar_steps)}
    # tokens per image whose chain runs at each step: all still-masked ones, the accepted ones, or
    # none (a replay accepts the recorded values)
    run = [N - sum(counts[:k]) if full_head else n for k, n in enumerate(head_tokens(counts, plan.ar_steps, sim))]
    if forced_latents is not None:
        run = [n if k in slot or n == N - sum(counts[:k]) else 0 for k, n in enumerate(run)]

    canvas = torch.zeros(B, N, C, device=device)
    known = torch.zeros(B, N, dtype=torch.bool, device=device)
    z_accepted = z_accepted_u = None                              # [B,N,Dz] each token's condition
    rows = torch.arange(B, device=device)[:, None]
    done, prev_x0 = 0, None
    draws = noise(gens, (), N, run[0])    # drawn a step ahead: on a GPU, while the last step's head runs
    for k in range(K):
        z = model.ar_forward(torch.cat([canvas, canvas]), torch.cat([known, known]), both)
        pos = orders[:, done:]                                    # [B,P_k] tokens predicted now
        z_c, z_u = z[:B][rows, pos], z[B:][rows, pos]             # [B,P_k,Dz]
        j, n, every = slot.get(k), run[k], run[k] == pos.shape[1]

        def record(t, x_t, x_prev, log_var, logp_mean, j=j, pos=pos):
            if j is None or not (plan.diffusion_steps[j] == t).any():
                return
            i = int((plan.diffusion_steps[j] == t).nonzero())
            for name, val in (("x_t", x_t), ("x_prev", x_prev), ("log_var", log_var)):
                rec[name][j, 0, i][rows, pos] = val
            rec["old_log_prob"][j, 0, i][rows, pos] = gaussian_log_prob(x_prev, logp_mean, log_var)

        x = _sample_chain(model, draws, z_c[:, :n], z_u[:, :n], cfg_scale, guided_logp, record,
                          1 if every else pad) if n else None
        if k + 1 < K:
            draws = noise(gens, (), pos.shape[1] - counts[k], run[k + 1])
        new = pos[:, : counts[k]]
        if j is not None:
            rec["canvas"][j], rec["known"][j] = canvas, known
            rec["accepted"][j][rows, new] = True
            rec["x0"][j][rows, pos] = x
            if prev_x0 is not None:
                rec["x0_before"][j], rec["has_before"][j] = prev_x0, True
            if per_step:
                rec["x0_step"][j, 0][rows, pos] = x
                _step_trajectories(model, plan, j, rows, pos, z_c, z_u if mte_guided else None, cfg_scale,
                                   guided_logp, rec, noise(mte_gens, (S - 1,), pos.shape[1]))
        prev_x0 = None
        if every and k + 1 in slot:                               # x0 at m - 1 of a trained step m
            prev_x0 = torch.zeros(B, N, C, device=device)
            prev_x0[rows, pos] = x
        if S > 1 and not per_step:
            z_accepted = z_c.new_zeros(B, N, z_c.shape[-1]) if z_accepted is None else z_accepted
            z_accepted[rows, new] = z_c[:, : counts[k]]
            if mte_guided:
                z_accepted_u = z_u.new_zeros(B, N, z_u.shape[-1]) if z_accepted_u is None else z_accepted_u
                z_accepted_u[rows, new] = z_u[:, : counts[k]]
        canvas = canvas.clone()
        canvas[rows, new] = x[:, : counts[k]] if forced_latents is None else forced_latents[rows, new]
        known = known.clone()
        known[rows, new] = True
        done += counts[k]
    rec["x0_final"][0] = canvas
    if S > 1 and not per_step:
        rec["x0_final"][1:] = _extra_trajectories(model, plan, z_accepted, z_accepted_u, cfg_scale, rec,
                                                  noise(mte_gens, (S - 1,), N))
    images = model.decode(canvas)
    return Rollout(prompts=flat_prompts, images=images, latents=canvas, plan=plan, **rec)


def _extra_trajectories(model: MARModel, plan: RolloutPlan, z_accepted: torch.Tensor, z_accepted_u, cfg_scale,
                        rec: dict, noise):
    """MTE's ``S - 1`` extra head trajectories of every token, from its acceptance ``z``.

    Once per image (reference code); with CFG when ``z_accepted_u`` is given (Harmon
    reference), else the conditional branch only (NOVA reference). Their transitions at
    each trained (AR step, head step) are stored on the tokens that AR step predicts.
    """
    S1 = plan.trajectories - 1
    predicted = ~rec["known"]                                     # [J,B,N]

    def record(t, x_t, x_prev, log_var, logp_mean):
        for j, i in (plan.diffusion_steps == t).nonzero().tolist():
            keep = predicted[j][None, :, :, None]
            for name, val in (("x_t", x_t), ("x_prev", x_prev), ("log_var", log_var)):
                rec[name][j, 1:, i] = val * keep

    z = z_accepted.expand(S1, *z_accepted.shape)
    z_u = None if z_accepted_u is None else z_accepted_u.expand(S1, *z_accepted_u.shape)
    return _sample_chain(model, noise, z, z_u, cfg_scale, False, record)


def _step_trajectories(model: MARModel, plan: RolloutPlan, j: int, rows, pos, z_c, z_u, cfg_scale: float,
                       guided_logp: bool, rec: dict, noise) -> None:
    """MTE's ``S - 1`` extra head trajectories of the tokens ``pos`` that trained AR step ``j``
    predicts, from that step's condition (paper, Alg. 2 line 8); recorded like the rollout's."""
    S1 = plan.trajectories - 1
    zc = z_c.expand(S1, *z_c.shape)
    zu = None if z_u is None else z_u.expand(S1, *z_u.shape)

    def record(t, x_t, x_prev, log_var, logp_mean):
        if not (plan.diffusion_steps[j] == t).any():
            return
        i = int((plan.diffusion_steps[j] == t).nonzero())
        for name, val in (("x_t", x_t), ("x_prev", x_prev), ("log_var", log_var)):
            rec[name][j, 1:, i][:, rows, pos] = val
        rec["old_log_prob"][j, 1:, i][:, rows, pos] = gaussian_log_prob(x_prev, logp_mean, log_var)

    rec["x0_step"][j, 1:][:, rows, pos] = _sample_chain(model, noise, zc, zu, cfg_scale, guided_logp, record)


@torch.no_grad()
def sample_images(model: MARModel, prompts: Sequence[str], seed: int, images_per_prompt: int = 1,
                  cfg_scale: float | None = None, device="cpu") -> torch.Tensor:
    """Plain generation (no recording): ``[P*images_per_prompt, 3, H, W]``."""
    plan = RolloutPlan((), torch.zeros(0, 0, dtype=torch.long), 1)
    return rollout(model, prompts, images_per_prompt, plan, seed=seed, cfg_scale=cfg_scale,
                   device=device).images
