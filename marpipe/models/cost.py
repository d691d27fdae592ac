"""Multiply-adds of one rollout of the real NOVA and Harmon, computed from their configs.

Pure arithmetic (no weights, no model classes): what ``marpipe bench train-step`` prints on a
machine without a GPU, to put the head's share of a rollout and MTE's extra head passes in the
real proportions. A linear layer costs its weight count per token, a transformer block of width
``d`` ``12 d^2`` per token plus ``2 L d`` for the scores over ``L`` keys; LayerNorms, softmax and
the VAE are left out; every AR step runs with CFG (a batch of two). The architectures, with their
official sources, and the measured ratios: ``docs/method.md``, "The cost model"."""
from __future__ import annotations

from math import comb

PROMPT_TOKENS = {"nova": 256, "harmon": 32}   # NOVA: fixed 256 slots; Harmon: a typical templated prompt


def block(d: int, queries: int, keys: int, mlp: int | None = None) -> float:
    """One pre-norm transformer block: projections + MLP per query, attention scores."""
    mlp = 4 * d if mlp is None else mlp
    return queries * (4 * d * d + 2 * d * mlp) + 2 * queries * keys * d


def qwen2_layer(queries: int, keys: int, h: int = 1536, inter: int = 8960, kv_dim: int = 256) -> float:
    """A Qwen2 decoder layer: q/o ``h^2`` each, k/v ``h * kv_dim`` each, gated MLP ``3 h inter``."""
    return queries * (2 * h * h + 2 * h * kv_dim + 3 * h * inter) + 2 * queries * keys * h


def head_macs_per_token_step(name: str) -> float:
    """One head evaluation of one token (a diffusion step)."""
    # blocks: AdaLN modulation 3 w^2 + MLP 2 w^2; condition embedding cond -> w (-> w for NOVA);
    # time embedding 256 -> w -> w; input projection 16 -> w; final AdaLN 2 w^2 and output layer
    if name == "nova":     # mlp_d6w1024 (diffnext/models/diffusion_mlp.py DiffusionMLP), outputs eps (16)
        w, blocks, cond = 1024, 6, 1024
        return blocks * 5 * w * w + (cond * w + w * w) + (256 * w + w * w) + 16 * w + 2 * w * w + w * 16
    if name == "harmon":   # SimpleMLPAdaLN width 1536, 12 res-blocks, outputs eps and v (32)
        w, blocks, cond = 1536, 12, 1280
        return blocks * 5 * w * w + cond * w + (256 * w + w * w) + 16 * w + 2 * w * w + w * 32
    raise ValueError(f"unknown real model {name!r}")


def ar_step_macs(name: str, known: int, tokens: int = 1024) -> float:
    """One AR step for one image (one CFG branch) with ``known`` tokens known."""
    p = PROMPT_TOKENS[name]
    if name == "nova":
        d = 1024
        enc = 16 * block(d, known + p, known + p)      # MAE half: the prompt and the known tokens
        dec = 16 * block(d, tokens + p, tokens + p)    # second half: the prompt and every position
        return enc + dec
    if name == "harmon":
        d, buf = 1280, 64
        enc = 20 * block(d, known + buf, known + buf)
        llm = 28 * qwen2_layer(known + buf, p + known + buf)     # the prompt's K/V cached (prompt_macs)
        dec = 20 * block(d, tokens + buf, tokens + buf)
        proj = 2 * (known + buf) * 1280 * 1536
        return enc + llm + dec + proj
    raise ValueError(f"unknown real model {name!r}")


def prompt_macs(name: str) -> float:
    """Once per prompt and CFG branch: NOVA's Phi-2 text encoder and video encoder; Harmon's prompt
    through the LLM, whose keys and values every AR step then reads (:func:`llm_tokens`)."""
    if name == "nova":
        return 256 * 2.7e9 + 16 * block(1024, 256, 256 + 256)
    p = PROMPT_TOKENS[name]
    return 28 * qwen2_layer(p, p)


def prompt_macs_per_image(name: str, group_size: int = 1, images: int | None = None) -> float:
    """An image's share of a rollout's prompt encodings, ``images`` images in groups of ``group_size``
    per prompt: NOVA's adapter encodes each distinct text once (the prompt once per group, the negative
    once per rollout); Harmon's prefill runs every row of the CFG batch. ``group_size = images = 1``:
    every image its prompt and the negative."""
    images = group_size if images is None else images
    if name == "nova":
        return prompt_macs(name) * (1 / group_size + 1 / images)
    return 2 * prompt_macs(name)


def llm_tokens(counts: list[int], prompt_tokens: int, buffer: int = 64, cached: bool = True) -> int:
    """Tokens Harmon's LLM runs (queries, each through every layer) in one rollout of one image, one
    CFG branch: the prompt once and, at each AR step, the known tokens and the ``buffer`` slots
    (``cached``, :class:`marpipe.models.harmon.HarmonMAR` and ``HarmonModel.sample``); without the
    cache the prompt again at every step."""
    known, total = 0, prompt_tokens if cached else 0
    for c in counts:
        total += known + buffer + (0 if cached else prompt_tokens)
        known += c
    return total


#: which tokens the head runs (one head step, both CFG branches): the official samplers the accepted
#: ones only; marpipe's rollout (:func:`marpipe.rollout.head_tokens`) every still-masked token at the
#: trained AR steps (and, ``marpipe_sim``, at the step before each), the accepted ones elsewhere;
#: ``full`` every still-masked token; the NOVA reference trainer every token at every step; the
#: Harmon reference trainer every token at the trained steps, the step before each and the last
RULES = ("official_sampler", "marpipe", "marpipe_sim", "full", "nova_reference", "harmon_reference")


def _runs_every_token(rule: str, k: int, K: int, trained: set) -> bool:
    """Whether AR step ``k`` runs the head on more than its accepted tokens under ``rule``."""
    if rule == "official_sampler":
        return False
    if rule in ("full", "nova_reference"):
        return True
    return k in trained or (rule in ("marpipe_sim", "harmon_reference") and k + 1 in trained) or \
        (rule == "harmon_reference" and k == K - 1)


def head_rows(counts: list[int], diffusion_steps: int, trained, rule: str = "marpipe", images: int = 1,
              guided: bool = True, row_multiple: int = 1) -> int:
    """Head token-steps of one rollout of ``images`` images whose trained AR steps are ``trained``:
    ``rule`` (:data:`RULES`) says which tokens run; a step that runs fewer than all still-masked
    tokens pads its batch to a multiple of ``row_multiple`` rows per CFG branch (marpipe on a CPU)."""
    N, K, trained = sum(counts), len(counts), set(trained)
    rows, masked = 0, N
    for k, c in enumerate(counts):
        every = N if rule.endswith("_reference") else masked       # the reference trainers: all N tokens
        n = every if _runs_every_token(rule, k, K, trained) else c
        per_branch = images * n
        if n < every:
            per_branch = -(-per_branch // row_multiple) * row_multiple
        rows += per_branch
        masked -= c
    return rows * diffusion_steps * (2 if guided else 1)


def expected_head_rows(counts: list[int], diffusion_steps: int, trained_ar: int, rule: str) -> float:
    """:func:`head_rows` of one image with CFG, averaged over the ``trained_ar`` AR steps drawn
    uniformly from the ``K`` (:meth:`marpipe.rollout.RolloutPlan.sample`)."""
    N, K = sum(counts), len(counts)
    J = min(trained_ar, K)
    miss1 = comb(K - 1, J) / comb(K, J)                   # P(k not trained)
    miss2 = comb(K - 2, J) / comb(K, J) if K > 1 else 1.0  # P(k and k + 1 not trained)
    total, masked = 0.0, N
    for k, c in enumerate(counts):
        if rule == "official_sampler":
            p = 0.0
        elif rule in ("full", "nova_reference"):
            p = 1.0
        elif rule == "marpipe":
            p = 1 - miss1
        elif k == K - 1:
            p = 1.0 if rule == "harmon_reference" else 1 - miss1
        else:
            p = 1 - miss2
        every = N if rule.endswith("_reference") else masked
        total += p * every + (1 - p) * c
        masked -= c
    return 2 * diffusion_steps * total


def rollout_cost(name: str, counts: list[int], diffusion_steps: int = 25, S: int = 1, guided: bool = False,
                 sim: bool = False, trained_ar: int = 12, full_head: bool = False, group_size: int = 1,
                 images: int | None = None) -> dict:
    """Multiply-adds of one image's rollout (CFG, both branches) with the mask schedule ``counts``.

    ``head_passes``: expected head token-steps (:func:`expected_head_rows`) under each rule with
    ``trained_ar`` trained AR steps; the rollout's head costs ``marpipe`` (``marpipe_sim`` with
    ``sim``; ``full`` with ``full_head``: every still-masked token at every step). MTE's ``S - 1``
    extra trajectories add ``(S-1) N T`` head passes once per image, twice that with CFG (``guided``).
    The prompts: :func:`prompt_macs_per_image` of ``images`` images in groups of ``group_size``.
    """
    N, T, K = sum(counts), diffusion_steps, len(counts)
    head_tok = head_macs_per_token_step(name)
    known, ar = 0, 0.0
    for c in counts:
        ar += 2 * ar_step_macs(name, known, N)
        known += c
    passes = {r: round(expected_head_rows(counts, T, trained_ar, r)) for r in RULES}
    passes["reference"] = passes[f"{name}_reference"]
    rule = "full" if full_head else "marpipe_sim" if sim else "marpipe"
    head = passes[rule] * head_tok
    mte = (S - 1) * N * T * head_tok * (2 if guided else 1)
    prompt = prompt_macs_per_image(name, group_size, images)
    total = ar + head + prompt
    return {"ar_steps": K, "transformer_macs": ar + prompt, "head_macs": head,
            "head_share": head / total, "head_passes": passes, "mte_extra_head_macs": mte,
            "mte_extra_share": mte / total, "head_macs_per_token_step": head_tok}


def train_step_cost(name: str, counts: list[int], variant: str, S: int = 1, guided: bool = False,
                    scope: str = "image", top_k: float = 0.3, loss_tokens: str = "unknown",
                    diffusion_steps: int = 25, trained_ar: int = 12, trained_head: int = 10,
                    beta: float = 0.01, units_per_token: int = 1, full_head: bool = False, group_size: int = 1,
                    images: int | None = None) -> float:
    """Expected multiply-adds of one image's training step: rollout, MTE's extra trajectories, loss.

    ``variant``: ``grpo`` (AR and head trained), ``fix_decoder`` (head frozen), ``mte``, ``sim``
    (MTE whose rollout also runs every masked token at the step before each trained step). The
    rollout's head runs as :func:`rollout_cost` says (``full_head``: on every masked token). The
    ``trained_ar`` AR steps are drawn uniformly from the ``K`` of ``counts``, so a step's loss
    enters with weight ``trained_ar / K``. At a trained step with ``P`` tokens still masked (``P``
    less the step's accepted ones under ``loss_tokens: after_step``) the loss runs the AR part on
    the recorded canvas and the head on ``P x trained_head`` transitions; a backward pass costs
    twice its forward (weights and inputs; the input gradient alone through a frozen head), and
    ``beta > 0`` adds the reference model's forward. MTE's ``S - 1`` extra trajectories (CFG
    doubling them when ``guided``) run once per image over all ``N`` tokens (``scope: image``) or
    at each trained step over its ``P`` masked tokens (``step``, Alg. 2), and the loss adds their
    transitions on the tokens holding one of the ``top_k`` most uncertain units: with
    ``units_per_token`` units (NOVA reference: 4 latent pixels per token) ``1 - (1 - top_k)^P`` of
    the tokens, the bound for independently ranked units (the head runs on whole tokens).
    """
    N, T, K = sum(counts), diffusion_steps, len(counts)
    head_tok = head_macs_per_token_step(name)
    mte_on = variant in ("mte", "sim")
    base = rollout_cost(name, counts, T, sim=variant == "sim", trained_ar=trained_ar, full_head=full_head,
                        group_size=group_size, images=images)
    # the loss encodes the prompts again (and the reference model with beta > 0), the negative counted too
    total = base["transformer_macs"] + base["head_macs"] + prompt_macs_per_image(name, group_size, images) * (1 + (beta > 0))
    head_bwd = 2 if variant == "grpo" else 1          # weight + input gradients, or the input's only
    extras = (S - 1) * (2 if guided else 1) if mte_on else 0
    known = 0
    for c in counts:
        P = N - known - (c if loss_tokens == "after_step" else 0)
        rows = P * trained_head
        step = 3 * ar_step_macs(name, known, N) + (1 + head_bwd) * rows * head_tok
        step += (ar_step_macs(name, known, N) + rows * head_tok) if beta > 0 else 0
        if mte_on:
            step += (S - 1) * (1 - (1 - top_k) ** units_per_token) * (1 + head_bwd) * rows * head_tok
            if scope == "step":
                step += extras * (N - known) * T * head_tok
        total += trained_ar / K * step
        known += c
    if scope == "image":
        total += extras * N * T * head_tok
    return total
