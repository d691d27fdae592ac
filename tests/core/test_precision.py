"""The trainer's dtype policy (docs/cluster.md, "Precision"): a model loaded in bf16 computes in bf16 under
autocast, its trained parameters are float32 master weights. At the paper's lr (1e-6) an AdamW step on
bf16 weights of ordinary size is below bf16's resolution and is rounded away."""
import copy

import torch

from marpipe.trainer import PromptItem, Trainer, dtype_policy
from tests.helpers import PROMPTS, grpo, tiny

ITEMS = [PromptItem(p, {}) for p in PROMPTS[:2]]


class MeanReward:
    def __call__(self, images, prompts, meta):
        return images.mean((1, 2, 3))


def trainer(model, tmp_path, name, **over):
    cfg = grpo(**{"lr": 1e-6, "beta": 0.05, "steps": 20, **over})
    return Trainer(model, cfg, ITEMS, MeanReward(), tmp_path / name, progress=False)


def with_gradient(t: Trainer) -> list[torch.Tensor]:
    return [p.grad is not None and (p.grad != 0) for p in t.params]


def test_a_bf16_step_at_the_papers_lr_moves_every_weight_with_a_gradient(tmp_path):
    base = tiny("tiny-nova")
    t16 = trainer(copy.deepcopy(base).to(torch.bfloat16), tmp_path, "bf16")
    t32 = trainer(copy.deepcopy(base).to(torch.bfloat16).float(), tmp_path, "f32")   # the same start, float32
    assert all(p.dtype == torch.float32 for p in t16.params)
    assert dtype_policy(tiny("tiny-nova").to(torch.bfloat16), "all", "cpu")["compute"] == "bfloat16"
    deltas, grads = [], []
    for t in (t16, t32):
        before = [p.detach().clone() for p in t.params]
        t.train_step(1)
        deltas.append(torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(t.params, before)]))
        grads.append(torch.cat([p.grad.reshape(-1) for p in t.params]))
    (d16, d32), (g16, g32) = deltas, grads
    graded = g16 != 0
    assert float(((d16 != 0) & graded).sum() / graded.sum()) >= 0.99
    # Adam's first step is lr * g / (|g| + eps) per entry (~ +-lr), so it equals the float32 run's wherever
    # bf16 compute (~3 % on the gradient's norm) cannot flip the entry's sign: where the gradient's error is
    # below half of it, the steps agree within 5 % of lr (bf16 AdamW: ~lr apart, the update rounded away)
    sure = g32.abs() > 2 * (g16 - g32).abs()
    assert float(sure.float().mean()) >= 0.3
    assert float((d16 - d32)[sure].abs().max()) <= 0.05 * t16.cfg.lr


def test_the_weights_the_forward_uses_stay_within_bf16_rounding_of_a_float32_run(tmp_path):
    """20 AdamW steps at lr 1e-6 with the same gradients: the bf16 run's master weights are the float32
    run's, bit for bit, so the bf16 weights autocast computes with are the float32 run's rounded."""
    base = tiny("tiny-nova").to(torch.bfloat16)
    t16, t32 = trainer(copy.deepcopy(base), tmp_path, "bf16"), trainer(copy.deepcopy(base).float(), tmp_path, "f32")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        for p16, p32 in zip(t16.params, t32.params):
            grad = torch.randn(p32.shape, generator=g)
            p16.grad, p32.grad = grad.to(p16.dtype), grad.clone()
        t16.optimizer.step()
        t32.optimizer.step()
    for p16, p32 in zip(t16.params, t32.params):
        assert torch.equal(p16.detach().float(), p32.detach())
        assert torch.equal(p16.detach().to(torch.bfloat16), p32.detach().to(torch.bfloat16))


def test_a_bf16_run_resumes_exactly_from_its_float32_master_weights(tmp_path):
    base = tiny("tiny-nova").to(torch.bfloat16)
    full = trainer(copy.deepcopy(base), tmp_path, "full", steps=2, save_every=1)
    full.train()
    cut = trainer(copy.deepcopy(base), tmp_path, "cut", steps=2, save_every=1)
    cut.train(steps=1)
    resumed = trainer(copy.deepcopy(base), tmp_path, "cut", steps=2, save_every=1)
    resumed.train(resume=True)
    assert all(p.dtype == torch.float32 for p in resumed.params)
    assert all(torch.equal(a, b) for a, b in zip(full.params, resumed.params))


def test_a_checkpoint_holds_the_trained_parameters_and_loads_over_the_start_weights(tmp_path):
    """+Fix Decoder trains the AR part: its checkpoints hold no head tensor (and no buffer); the head
    comes from the weights the run started from (Harmon: the warmed-up head), loaded first."""
    import pytest

    from marpipe.io.checkpoint import latest_valid, load_model_weights, load_overlay
    start = tiny("tiny-nova")
    with torch.no_grad():                       # the "warmed-up" head the run starts from
        for p in start.head_parameters():
            p.add_(0.01)
    t = trainer(copy.deepcopy(start), tmp_path, "run", steps=1, save_every=1, fix_decoder=True)
    t.train()
    saved = load_model_weights(latest_valid(tmp_path / "run" / "checkpoints"))
    names = {n for n, p in t.model.named_parameters() if any(p is q for q in t.model.ar_parameters())}
    assert set(saved) == names
    rebuilt = tiny("tiny-nova")                 # the base model: the start (warm) weights, then the checkpoint
    load_overlay(rebuilt, {n: p for n, p in start.named_parameters() if n not in names}, "warm")
    load_overlay(rebuilt, saved, "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), t.model.state_dict().values()))
    with pytest.raises(ValueError, match="name nothing in TinyMAR.*weights of another model"):
        load_overlay(rebuilt, {"no.such.tensor": torch.zeros(1)}, "x.safetensors")
