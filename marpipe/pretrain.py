"""MAR pre-training (paper Eq. 2): how the small world makes its base models.

For a batch of (image, prompt) pairs (:func:`mar_loss`): hide a random fraction of the tokens, run
the AR part on the rest and train the head to predict the noise of every hidden token at a random
sampling step. :func:`pretrain` runs the steps; the measured effect of its choices on the tiny
models: ``docs/results.md``, "The small world"."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from marpipe import diffusion as D

Batch = Callable[[int, int], tuple[torch.Tensor, Sequence[str]]]  # (step, batch_size) -> images, prompts


def mar_loss(model, images: torch.Tensor, prompts: Sequence[str], gen: torch.Generator,
             cfg_dropout: float = 0.1, vlb_weight: float = 1e-3) -> torch.Tensor:
    """``|| eps - eps_theta(x_t | t, z) ||^2`` over the hidden tokens (cosine-distributed mask
    ratio, random order), weighted ``max(1, 1/SNR)`` (a 10-step sampler of a model trained for
    minutes is only as good as its high-noise x0 estimate); prompts dropped with probability
    ``cfg_dropout`` so CFG's unconditional branch is learned. A learned variance (Harmon) also gets
    improved DDPM's bound term on ``v`` (mean detached) at ``vlb_weight``: MAR's and Harmon's
    DiffLoss weight it 1, which at the small world's budget teaches the bound-optimal variance of a
    poor mean, a large one (grainy samples), so the small world keeps ``1e-3``."""
    x0 = model.encode_images(images)                                   # [B,N,C]
    B, N, C = x0.shape
    dev = x0.device
    # cosine-distributed mask ratio in (0, 1]; a random order per image
    ratio = torch.cos(math.pi / 2 * torch.rand(B, generator=gen)).clamp_min(1.0 / N)
    n_masked = (ratio * N).ceil().long()
    order = torch.rand(B, N, generator=gen).argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(N).expand(B, N))
    masked = (rank < n_masked[:, None]).to(dev)
    drop = torch.rand(B, generator=gen) < cfg_dropout
    texts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    z = model.ar_forward(x0, ~masked, model.encode_prompts(texts))       # [B,N,Dz]
    x0m, zm = x0[masked], z[masked]                                     # [M,C], [M,Dz]
    step = torch.randint(0, model.schedule.num_steps, (x0m.shape[0],), generator=gen).to(dev)
    eps = torch.randn(x0m.shape, generator=gen).to(dev)
    abar = model.schedule.at("abar", step, x0m)
    x_t = abar.sqrt() * x0m + (1 - abar).sqrt() * eps
    eps_hat, v = model.head(x_t, step, zm)
    # truncated-SNR weighting (Salimans & Ho 2022): max(1, 1/SNR) on the eps error, i.e. the
    # x0 error at high noise, where a few-step sampler needs a good x0 estimate most
    weight = ((1 - abar) / abar).clamp_min(1.0)
    loss = (weight * (eps_hat - eps) ** 2).mean()
    if v is not None and vlb_weight > 0:
        mean_true = D.sched_true_mean(model.schedule, step, x_t, x0m)
        log_var_true = model.schedule.at("post_var", step, x0m).log()
        mean_hat = D.posterior_mean(model.schedule, step, x_t, eps_hat.detach())
        log_var = D.posterior_log_var(model.schedule, step, x0m, v)
        kl = 0.5 * (log_var - log_var_true + (log_var_true.exp() + (mean_true - mean_hat) ** 2)
                    * torch.exp(-log_var) - 1)
        loss = loss + vlb_weight * kl.mean()
    return loss


def pretrain(model, batches: Batch, steps: int, batch_size: int = 64, lr: float = 1e-3,
             head_fraction: float = 1.0, seed: int = 0, log_every: int = 50,
             progress: bool = True) -> list[dict]:
    """Train ``model`` in place; returns ``[{step, loss, seconds}]`` every ``log_every`` steps.
    ``head_fraction < 1`` stops updating the head after that fraction of the steps while the AR
    part keeps learning (the small world leaves ``tiny-harmon``'s head under-trained, as the real
    Harmon's is before its warm-up)."""
    gen = torch.Generator().manual_seed(seed)
    head = set(id(p) for p in model.head_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    head_stop = int(round(head_fraction * steps))
    model.train()
    log, t0, running = [], time.perf_counter(), 0.0
    for step in tqdm(range(steps), disable=not progress, desc="pretrain", dynamic_ncols=True):
        if step == head_stop:
            for p in model.head_parameters():
                p.requires_grad_(False)
            opt = torch.optim.AdamW([p for p in model.parameters() if id(p) not in head],
                                    lr=sched.get_last_lr()[0], betas=(0.9, 0.95))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s, s0=step: 0.5 * (1 + math.cos(math.pi * (s + s0) / steps)))
        images, prompts = batches(step, batch_size)
        loss = mar_loss(model, images, prompts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            log.append({"step": step + 1, "loss": running / n, "seconds": time.perf_counter() - t0})
            running = 0.0
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return log
