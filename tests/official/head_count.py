"""Head rows counted where they run: a forward hook on the official head module during a rollout.

Shared by the NOVA and Harmon official tests: marpipe's rollout of a tiny official model at the
paper's step structure (64 AR steps, 25 head steps, 12 AR steps and 10 head steps trained, CFG),
its head's rows counted through a forward hook on the official module the adapter calls, against
:func:`marpipe.models.cost.head_rows` for the same plan, so the cost model cannot drift from the code.
"""
from __future__ import annotations

from torch import nn

PAPER_SAMPLING = {"ar_steps": 64, "diffusion_steps": 25}
TRAIN_AR, TRAIN_HEAD = 12, 10
PROMPTS = ["a red circle on the left", "two blue squares"]
GROUP = 2


def counted_rollout(model, head: nn.Module, plan, **kw) -> tuple[int, int]:
    """``(rows, calls)``: rows of every call of ``head`` (its first argument's leading dim) during
    one rollout of ``PROMPTS`` x ``GROUP`` images."""
    from marpipe.rollout import rollout
    seen = [0, 0]

    def hook(module, args, out):
        seen[0] += args[0].shape[0]
        seen[1] += 1
    handle = head.register_forward_hook(hook)
    try:
        rollout(model, PROMPTS, GROUP, plan, seed=3, **kw)
    finally:
        handle.remove()
    return seen[0], seen[1]


def check_head_rows(model, head: nn.Module, tag: str) -> None:
    """Hook-counted head rows == ``head_rows`` under the rule the rollout runs: ``marpipe`` (loss's
    tokens), ``marpipe_sim`` (and the step before each trained one) and ``full`` (every masked token),
    with the CPU's row padding; and ``T`` head calls per AR step that runs one."""
    from marpipe.models.cost import head_rows
    from marpipe.rollout import CPU_ROW_MULTIPLE, RolloutPlan, mask_schedule
    counts, T = mask_schedule(model), model.sampling.diffusion_steps
    plan = RolloutPlan.sample(len(counts), T, TRAIN_AR, TRAIN_HEAD, 1, seed=7)
    assert len(plan.ar_steps) == TRAIN_AR and plan.diffusion_steps.shape == (TRAIN_AR, TRAIN_HEAD)
    B = len(PROMPTS) * GROUP
    for label, kw, rule in (("marpipe", dict(sim=False), "marpipe"), ("sim", dict(sim=True), "marpipe_sim"),
                            ("full", dict(sim=False, full_head=True), "full")):
        rows, calls = counted_rollout(model, head, plan, **kw)
        want = head_rows(counts, T, plan.ar_steps, rule, images=B, row_multiple=CPU_ROW_MULTIPLE)
        print(f"[{tag}] head rows through the hook, {label:<7s}: {rows:>8,}  head_rows({rule!r}) = {want:>8,}  "
              f"({len(counts)} AR steps x {T} head steps, {calls} calls; official sampler "
              f"{head_rows(counts, T, plan.ar_steps, 'official_sampler', images=B):,})")
        assert calls == len(counts) * T
        assert rows == want, f"{label}: the head ran {rows} rows, the cost model says {want}"
