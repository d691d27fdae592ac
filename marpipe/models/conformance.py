"""Conformance suite: does a model honour :class:`~marpipe.models.protocol.MARModel` the way rollouts and
the GRPO loss rely on? :func:`check_model` runs the checks (listed there) on any model; :func:`main`
(``marpipe check-model SPEC``) runs them on a spec and exits non-zero when one fails. See
docs/development.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import traceback
from collections.abc import Callable

import torch

from marpipe import diffusion as D
from marpipe.grpo import gaussian_log_prob, group_advantages
from marpipe.models.protocol import MARModel, Prompts

PROMPTS = ["a red circle on the left", "two blue squares"]
Result = tuple[str, bool, str]


def _tol(model) -> float:
    p = next(model.parameters(), None)
    return 1e-4 if p is None or p.dtype == torch.float32 else 5e-2


def _close(a, b, tol) -> tuple[bool, float]:
    err = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    scale = float(b.float().abs().max()) if b.numel() else 0.0
    return err <= tol * max(1.0, scale), err


def _plan(model, S=1):
    from marpipe.rollout import RolloutPlan, mask_schedule
    K, T = len(mask_schedule(model)), model.sampling.diffusion_steps
    return RolloutPlan.sample(K, T, min(3, K), min(3, max(T - 1, 1)), S, seed=1)


def _rollout(model, seed=0, cfg_scale=None, S=1, group=2, device="cpu"):
    from marpipe.rollout import rollout
    return rollout(model, PROMPTS, group, _plan(model, S), seed=seed, cfg_scale=cfg_scale, device=device)


def check_protocol(model, device) -> str:
    missing = [a for a in ("num_tokens", "token_dim", "image_size", "learned_variance", "sampling", "schedule",
                           "encode_prompts", "encode_negative", "mask_counts", "ar_forward", "head", "decode",
                           "ar_parameters", "head_parameters") if not hasattr(model, a)]
    assert not missing, f"missing {missing}"
    assert isinstance(model, MARModel), "not a MARModel"
    ar, hd = {id(p) for p in model.ar_parameters()}, {id(p) for p in model.head_parameters()}
    allp = {id(p) for p in model.parameters()}
    assert ar and hd, "ar_parameters() or head_parameters() is empty"
    assert not ar & hd, f"{len(ar & hd)} parameters are in both ar_parameters() and head_parameters()"
    assert ar | hd == allp, (f"ar+head cover {len(ar | hd)} of {len(allp)} parameters "
                             f"({len(allp - ar - hd)} in neither: set_trainable('all') would train them)")
    K = model.sampling.ar_steps
    counts = list(model.mask_counts(K))
    assert sum(counts) == model.num_tokens and min(counts) >= 0 and len(counts) <= K, \
        f"mask_counts({K}) = {counts[:8]}...: must be <= {K} non-negative counts summing to N={model.num_tokens}"
    n_ar = sum(p.numel() for p in model.ar_parameters())
    n_hd = sum(p.numel() for p in model.head_parameters())
    return f"N={model.num_tokens} C={model.token_dim} image={model.image_size}; AR {n_ar:,} / head {n_hd:,} params"


def check_schedule(model, device) -> str:
    s, T = model.schedule, model.sampling.diffusion_steps
    assert s.num_steps == T, f"schedule has {s.num_steps} steps, sampling.diffusion_steps = {T}"
    ts = s.timesteps
    assert bool((ts[1:] < ts[:-1]).all()), "timesteps must decrease (index 0 = noisiest)"
    assert bool(((s.abar > 0) & (s.abar <= 1)).all()) and bool((s.abar[1:] >= s.abar[:-1]).all()), "bad alpha-bar"
    assert bool((s.post_var > 0).all()) and bool((s.beta > 0).all()), "non-positive variance"
    return f"T={T}, timesteps {int(ts[0])}..{int(ts[-1])}"


def check_encode(model, device) -> str:
    c, n = model.encode_prompts(PROMPTS), model.encode_negative(3)
    for name, p, b in (("encode_prompts", c, len(PROMPTS)), ("encode_negative", n, 3)):
        assert isinstance(p, Prompts), f"{name} must return Prompts"
        assert p.emb.dim() == 3 and p.emb.shape[0] == b, f"{name}.emb shape {tuple(p.emb.shape)}"
        assert p.pad.shape == p.emb.shape[:2] and p.pad.dtype == torch.bool, f"{name}.pad {tuple(p.pad.shape)} {p.pad.dtype}"
        assert p.emb.is_floating_point() and torch.isfinite(p.emb).all(), f"{name}.emb not finite"
        assert not p.pad.all(1).any(), f"{name}: a prompt is all padding"
    assert c.emb.shape[2] == n.emb.shape[2], "prompt and negative widths differ"
    both = Prompts.cat([c, model.encode_negative(len(PROMPTS))])
    assert both.emb.shape[0] == 2 * len(PROMPTS)
    w = min(c.emb.shape[1], n.emb.shape[1])
    assert not torch.equal(c.emb[:1, :w], n.emb[:1, :w]), "negative prompt encodes like a prompt"
    return f"emb {tuple(c.emb.shape)} {c.emb.dtype}, negative {tuple(n.emb.shape)}"


def _canvas(model, B, gen):
    N, C = model.num_tokens, model.token_dim
    canvas = torch.randn(B, N, C, generator=gen)
    known = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):  # different numbers of known tokens per row (0, some, all but one)
        k = [0, N // 3, N - 1, N // 2][b % 4]
        known[b, torch.randperm(N, generator=gen)[:k]] = True
    return canvas, known


def check_ar_forward(model, device, tol) -> str:
    gen = torch.Generator().manual_seed(0)
    B = 4
    canvas, known = _canvas(model, B, gen)
    canvas, known = canvas.to(device), known.to(device)
    prompts = model.encode_prompts(PROMPTS * 2)
    with torch.no_grad():
        z = model.ar_forward(canvas, known, prompts)
        assert z.dim() == 3 and z.shape[:2] == (B, model.num_tokens), f"z shape {tuple(z.shape)}"
        assert z.dtype == torch.float32, f"z dtype {z.dtype} (consumers expect float32)"
        assert torch.isfinite(z).all(), "z not finite"
        # row independence / grouping: each row alone gives the same z
        worst = 0.0
        for b in range(B):
            zb = model.ar_forward(canvas[b:b + 1], known[b:b + 1], prompts.index(slice(b, b + 1)))
            ok, err = _close(zb[0], z[b], tol)
            worst = max(worst, err)
            assert ok, f"row {b} alone gives another z (max diff {err:.2e})"
        # unknown tokens' values must not matter
        noisy = torch.where(known[..., None], canvas, canvas + 10 * torch.randn_like(canvas))
        ok, err = _close(model.ar_forward(noisy, known, prompts), z, tol)
        assert ok, f"values of unknown tokens change z (max diff {err:.2e})"
    return f"z {tuple(z.shape)}; row-wise max diff {worst:.1e}"


def check_head(model, device, tol) -> str:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = model.ar_forward(torch.zeros(1, model.num_tokens, model.token_dim, device=device),
                             torch.zeros(1, model.num_tokens, dtype=torch.bool, device=device),
                             model.encode_prompts(PROMPTS[:1]))[0]
        M, T = min(6, model.num_tokens), model.sampling.diffusion_steps
        x = torch.randn(M, model.token_dim, generator=gen).to(device)
        step = torch.arange(M, device=device) % T
        eps, v = model.head(x, step, z[:M])
        assert eps.shape == (M, model.token_dim) and eps.dtype == torch.float32, f"eps {tuple(eps.shape)} {eps.dtype}"
        assert torch.isfinite(eps).all(), "eps not finite"
        if model.learned_variance:
            assert v is not None and v.shape == eps.shape and v.dtype == torch.float32, "v missing or misshaped"
            assert torch.isfinite(v).all()
        else:
            assert v is None, "fixed-variance model returned v"
        e1, _ = model.head(x[:1], step[:1], z[:1])
        ok, err = _close(e1[0], eps[0], tol)
        assert ok, f"head output of a token depends on the other tokens of the batch ({err:.2e})"
        e2, _ = model.head(x, step, z[:M] + 1.0)
        assert not torch.allclose(e2, eps), "head ignores z"
    return f"eps {tuple(eps.shape)}" + (", v" if v is not None else "")


def check_layout(model, device) -> str:
    if not hasattr(model, "tokens_to_latents"):
        return "model exposes no token<->latent layout (skipped)"
    t = torch.randn(2, model.num_tokens, model.token_dim, device=device)
    lat = model.tokens_to_latents(t)
    assert torch.equal(model.latents_to_tokens(lat), t), "latents_to_tokens(tokens_to_latents(t)) != t"
    detail = f"latent {tuple(lat.shape)}"
    pe = getattr(getattr(getattr(model, "transformer", None), "image_encoder", None), "patch_embed", None)
    if pe is not None and hasattr(pe, "patchify"):
        pe.height, pe.width = model.grid
        assert torch.equal(pe.patchify(lat), t), "layout differs from the official PatchEmbed.patchify"
        assert torch.equal(pe.unpatchify(t), lat), "layout differs from the official PatchEmbed.unpatchify"
        detail += "; matches the official patchify/unpatchify"
    return detail


def check_decode(model, device) -> str:
    with torch.no_grad():
        img = model.decode(torch.randn(2, model.num_tokens, model.token_dim, device=device))
    S = model.image_size
    assert tuple(img.shape) == (2, 3, S, S), f"images {tuple(img.shape)}, expected (2, 3, {S}, {S})"
    assert img.is_floating_point() and torch.isfinite(img).all()
    assert float(img.min()) >= 0 and float(img.max()) <= 1, f"range [{float(img.min()):.3f}, {float(img.max()):.3f}]"
    return f"images {tuple(img.shape)} in [{float(img.min()):.2f}, {float(img.max()):.2f}]"


def check_cfg(model, device, tol) -> str:
    from marpipe.rollout import _head_step
    scale = model.sampling.cfg_scale
    assert scale != 1.0, "configured CFG scale is 1: guidance is off"
    a = _rollout(model, device=device)
    b = _rollout(model, cfg_scale=1.0, device=device)
    assert not torch.equal(a.latents, b.latents), "CFG scale does not change the samples"
    B, N, C = 2, model.num_tokens, model.token_dim
    gen = torch.Generator().manual_seed(2)
    canvas, known = _canvas(model, B, gen)
    canvas, known = canvas.to(device), known.to(device)
    known[1] = known[0]   # rollouts keep the same count per row
    cond = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        z_both = model.ar_forward(torch.cat([canvas, canvas]), torch.cat([known, known]),
                                  Prompts.cat([cond, model.encode_negative(B)]))
        z_c = model.ar_forward(canvas, known, cond)
        ok, err = _close(z_both[:B], z_c, tol)
        assert ok, f"the CFG batch [cond; uncond] gives another conditional z ({err:.2e})"
        assert not torch.allclose(z_both[:B], z_both[B:]), "conditional and unconditional z are equal"
        x = torch.randn(B, N, C, generator=gen).to(device)
        mean1, _, logp_mean = _head_step(model, x, 1, z_both[:B], z_both[B:], 1.0, False)
        ok, err = _close(mean1, logp_mean, tol)
        assert ok, f"CFG scale 1 differs from the conditional branch ({err:.2e})"
    return f"samples change with scale {scale}; scale 1 == conditional (max diff {err:.1e})"


def check_reproducible(model, device) -> str:
    a, b, c = _rollout(model, device=device), _rollout(model, device=device), _rollout(model, seed=1, device=device)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents), "same seed, different samples"
    assert torch.equal(a.old_log_prob, b.old_log_prob), "same seed, different log-probs"
    assert not torch.equal(a.latents, c.latents), "different seeds, same samples"
    return f"bit-identical for seed 0 ({tuple(a.images.shape)})"


def recompute_log_probs(model, ro) -> torch.Tensor:
    """Trajectory-0 log-probs of a rollout recomputed from its stored canvases (conditional
    branch, as the rollout records them by default): ``[J, T', B, N]``, 0 where nothing is recorded."""
    J, S, Tp, B, N = ro.old_log_prob.shape
    out = torch.zeros(J, Tp, B, N, device=ro.x_t.device, dtype=ro.x_t.dtype)
    prompts = model.encode_prompts(list(dict.fromkeys(ro.prompts)))   # unique prompts, in order
    G = B // len(prompts)
    cond = prompts.repeat_interleave(G)
    with torch.no_grad():
        for j in range(J):
            z = model.ar_forward(ro.canvas[j], ro.known[j], cond)
            b, n = (~ro.known[j]).nonzero(as_tuple=True)
            for i in range(Tp):
                step = ro.plan.diffusion_steps[j, i].to(ro.x_t.device).expand(b.numel())
                x_t = ro.x_t[j, 0, i][b, n]
                eps, _ = model.head(x_t, step, z[b, n])
                mean = D.posterior_mean(model.schedule, step, x_t, eps)
                out[j, i][b, n] = gaussian_log_prob(ro.x_prev[j, 0, i][b, n], mean, ro.log_var[j, 0, i][b, n])
    return out


@contextlib.contextmanager
def _upcast(model):
    """``model`` one precision up (bfloat16/float16 -> float32, float32 -> float64), in place (adapters
    share their frozen parts with every copy), then back: each tensor's own dtype again, a lossless
    round trip. The reference against which the model's own rounding is measured."""
    up = torch.float64 if next(model.parameters()).dtype == torch.float32 else torch.float32
    dtypes = []
    model._apply(lambda t: dtypes.append(t.dtype) or (t.to(up) if t.is_floating_point() else t))
    try:
        yield up
    finally:
        back = iter(dtypes)
        model._apply(lambda t: t.to(next(back)))


def _upcast_rollout(ro, dtype):
    from dataclasses import fields, replace
    return replace(ro, **{f.name: getattr(ro, f.name).to(dtype) for f in fields(ro)
                          if isinstance(getattr(ro, f.name), torch.Tensor) and getattr(ro, f.name).is_floating_point()})


def check_logp(model, device, tol) -> str:
    """The recorded log-probs against a recomputation one precision up. The tolerance is the model's
    measured rounding: its own recomputation's largest error against the same reference, times 8 (the
    rollout computes in other batch shapes, so it rounds otherwise, but by the same order; a wrong step,
    variance or condition moves a log-prob by orders more). In the trainer's loss (``theta_is_old``)
    the ratio is 1 exactly; with the recorded log-probs as ``pi_old`` it is within that tolerance."""
    from marpipe.config import GRPOConfig
    from marpipe.loss import mar_grpo_loss
    ro = _rollout(model, S=1, device=device)
    old = ro.old_log_prob[:, 0]
    new = recompute_log_probs(model, ro)
    with _upcast(model) as up:
        exact = recompute_log_probs(model, _upcast_rollout(ro, up))
    pred = (~ro.known)[:, None].expand_as(old)
    err = float((new.double() - exact.double())[pred].abs().max())          # the model's own rounding
    floor = torch.finfo(next(model.parameters()).dtype).eps * max(1.0, float(exact[pred].abs().max()))
    limit = 8 * max(err, floor)
    worst = float((old.double() - exact.double())[pred].abs().max())
    assert worst <= limit, (f"recorded log-probs differ from their recomputation one precision up by up to "
                            f"{worst:.3e}; the model's own rounding is {err:.1e} (limit 8x: {limit:.1e})")
    B = ro.latents.shape[0]
    adv = group_advantages(torch.linspace(0, 1, B), B // len(PROMPTS))
    K, T = model.sampling.ar_steps, model.sampling.diffusion_steps
    cfg = GRPOConfig(group_size=B // len(PROMPTS), prompts_per_step=len(PROMPTS), train_ar_steps=min(3, K),
                     train_diffusion_steps=min(3, max(T - 1, 1)), beta=0.01)
    out = mar_grpo_loss(model, ro, adv, cfg, ref_model=copy.deepcopy(model), theta_is_old=True)
    r, kl = out.stats["ratio_mean"], out.stats["kl"]
    assert r == 1.0, f"ratio_mean = {r!r} at theta = theta_old in the trainer's loss (must be 1 exactly)"
    assert abs(kl) <= tol * 1e-2, f"kl = {kl!r} with ref = model"
    assert math.isfinite(out.stats["loss"])
    r_rec = mar_grpo_loss(model, ro, adv, cfg).stats["ratio_mean"]
    assert abs(math.log(r_rec)) <= 2 * limit, \
        f"ratio_mean = {r_rec!r} against the recorded log-probs (allowed: exp(+-{2 * limit:.1e}))"
    return (f"max |logp_old - logp_exact| = {worst:.1e} (own rounding {err:.1e}); ratio_mean = 1 (trainer), "
            f"{r_rec:.6f} (recorded pi_old); kl = {kl:.1e}")


def check_fix_decoder(model, device) -> str:
    from marpipe.config import GRPOConfig
    from marpipe.loss import mar_grpo_loss
    from marpipe.trainer import set_trainable
    m = copy.deepcopy(model)
    ro = _rollout(m, device=device)
    B = ro.latents.shape[0]
    adv = group_advantages(torch.linspace(-1, 1, B), B // len(PROMPTS))
    K, T = m.sampling.ar_steps, m.sampling.diffusion_steps
    cfg = GRPOConfig(group_size=B // len(PROMPTS), prompts_per_step=len(PROMPTS), train_ar_steps=min(3, K),
                     train_diffusion_steps=min(3, max(T - 1, 1)), beta=0.0, fix_decoder=True, lr=1e-3)
    params = set_trainable(m, cfg.trained_parts)
    head_before = [p.detach().clone() for p in m.head_parameters()]
    ar_before = [p.detach().clone() for p in m.ar_parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    m.train()
    out = mar_grpo_loss(m, ro, adv, cfg, None)
    out.loss.backward()
    assert all(p.grad is None for p in m.head_parameters()), "the head received gradients with fix_decoder"
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(head_before, m.head_parameters())), "the head changed"
    changed = sum(not torch.equal(a, p) for a, p in zip(ar_before, m.ar_parameters()))
    assert changed > 0, "no AR parameter changed after one step"
    return f"head bit-identical; {changed} of {len(ar_before)} AR tensors changed"


def _head_ignores_z(model, device) -> bool:
    gen = torch.Generator().manual_seed(3)
    M = min(4, model.num_tokens)
    with torch.no_grad():
        z = model.ar_forward(torch.zeros(1, model.num_tokens, model.token_dim, device=device),
                             torch.zeros(1, model.num_tokens, dtype=torch.bool, device=device),
                             model.encode_prompts(PROMPTS[:1]))[0, :M]
        x = torch.randn(M, model.token_dim, generator=gen).to(device)
        step = torch.zeros(M, dtype=torch.long, device=device)
        a, _ = model.head(x, step, z)
        b, _ = model.head(x, step, z + 1.0)
    return torch.equal(a, b)


def zero_init_probe(model, device="cpu", scale: float = 0.02):
    """``(model, "")`` for a head that uses ``z``; for a zero-initialised one (ignores ``z`` and has
    all-zero tensors) a deep copy with those tensors set to ``scale``-sized noise, and a note."""
    try:
        if not _head_ignores_z(model, device):
            return model, ""
    except Exception:  # noqa: BLE001 - the head check itself reports the failure
        return model, ""
    zero = [p for p in model.head_parameters() if p.numel() and not p.detach().any()]
    if not zero:
        return model, ""
    probe = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in (q for q in probe.head_parameters() if q.numel() and not q.detach().any()):
            p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p))
    return probe, f"zero-initialised head ({len(zero)} all-zero tensors): checked on a copy with them perturbed; "


def check_model(model, device: str | torch.device = "cpu") -> list[Result]:
    """Run every check; never raises for a failing check (the failure is in the result): ``[(check name,
    passed, detail), ...]``. The checks:

    * ``protocol``: the attributes and methods exist; ``ar_parameters`` and ``head_parameters`` are
      disjoint and together are every parameter of the module; ``mask_counts`` makes every token known;
    * ``schedule``: ``diffusion_steps`` decreasing timesteps, sane alpha-bars and variances;
    * ``encode``: shapes/dtypes of ``encode_prompts`` / ``encode_negative``; the negative differs;
    * ``ar_forward``: ``z [B, N, Dz]`` float32 and finite, also for rows with different numbers of
      known tokens; a row's ``z`` does not depend on the other rows of the batch;
    * ``head``: ``eps [M, C]`` (and ``v`` iff ``learned_variance``) float32, finite, row-independent,
      and it depends on ``z``;
    * ``layout``: token <-> latent round trip (where the model exposes it);
    * ``decode``: ``[B, 3, image_size, image_size]`` in ``[0, 1]``;
    * ``cfg``: guidance at the configured scale changes the samples; at scale 1 the guided eps is the
      conditional branch's and the CFG batch ``[cond; uncond]`` gives the conditional ``z``;
    * ``rollout_reproducible``: a seeded rollout is bit-identical, another seed differs;
    * ``logp_recompute``: every recorded log-prob equals its recomputation one precision up within the
      model's measured rounding (theta = theta_old), and the trainer's loss reports ``ratio_mean`` 1
      exactly and ``kl`` 0 with ``ref = model``;
    * ``fix_decoder``: ``set_trainable(model, 'ar')`` + one optimizer step on the GRPO loss leaves the
      head bit-identical and changes the AR part.

    Checks run on a deep copy where they train, so the model passed in is left untouched.

    A freshly built MAR head (the official NOVA and Harmon heads, the tiny models) zero-initialises its
    output layers, so it ignores ``z`` and guidance changes nothing. Such a head is told from a broken one
    by its all-zero tensors: ``head`` and ``cfg`` then run on a copy whose all-zero head tensors are
    perturbed, and say so. A head that ignores ``z`` without all-zero tensors, or still ignores it once
    they are perturbed, fails.
    """
    tol = _tol(model)
    was_training = model.training
    model.eval()
    probe, note = zero_init_probe(model, device)
    probe.eval()
    checks: list[tuple[str, Callable[[], str]]] = [
        ("protocol", lambda: check_protocol(model, device)),
        ("schedule", lambda: check_schedule(model, device)),
        ("encode", lambda: check_encode(model, device)),
        ("ar_forward", lambda: check_ar_forward(model, device, tol)),
        ("head", lambda: note + check_head(probe, device, tol)),
        ("layout", lambda: check_layout(model, device)),
        ("decode", lambda: check_decode(model, device)),
        ("cfg", lambda: note + check_cfg(probe, device, tol)),
        ("rollout_reproducible", lambda: check_reproducible(model, device)),
        ("logp_recompute", lambda: check_logp(model, device, tol)),
        ("fix_decoder", lambda: check_fix_decoder(model, device)),
    ]
    results: list[Result] = []
    for name, fn in checks:
        try:
            results.append((name, True, fn()))
        except Exception as exc:  # noqa: BLE001 - a check's failure is a result
            msg = str(exc) or type(exc).__name__
            if not isinstance(exc, AssertionError):
                msg = f"{type(exc).__name__}: {msg} @ {traceback.extract_tb(exc.__traceback__)[-1].name}"
            results.append((name, False, msg))
    model.train(was_training)
    return results


def format_results(results: list[Result]) -> str:
    width = max(len(n) for n, _, _ in results)
    return "\n".join(f"{'PASS' if ok else 'FAIL'}  {n:<{width}}  {d}" for n, ok, d in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="marpipe check-model", description="MAR protocol conformance suite")
    ap.add_argument("spec", help="tiny-nova | tiny-harmon | file.safetensors | nova:<dir> | harmon:<dir> "
                                 "(or a name given to marpipe.models.registry.register_spec)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    ap.add_argument("--ar-steps", type=int, default=None, help="override sampling.ar_steps (faster checks)")
    a = ap.parse_args(argv)
    from marpipe.models.registry import load_model
    torch.manual_seed(0)
    model = load_model(a.spec, device=a.device, dtype=getattr(torch, a.dtype) if a.dtype else None)
    if a.ar_steps:
        from dataclasses import replace
        model.sampling = replace(model.sampling, ar_steps=a.ar_steps)
    results = check_model(model, a.device)
    print(f"model: {a.spec} ({type(model).__name__}, {getattr(model, 'source', '')})")
    print(format_results(results))
    failed = [n for n, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
