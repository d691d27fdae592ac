"""Adapter facts checked on the STAND-INS (testbed.standins, not the real NOVA / Harmon): trainable
parts, frozen parts, strict loading, manifest checks, schedules, prompt templates, registry."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from marpipe.models.download import ManifestError, write_manifest
from marpipe.models.harmon import CHAT_TEMPLATE, HarmonMAR, space_timesteps
from marpipe.models.nova import NovaMAR
from marpipe.models.registry import load_model
from marpipe.models.tiny import TinyMAR
from marpipe.trainer import set_trainable
from testbed.standins import save_harmon_standin, save_nova_standin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def harmon():
    return load_model("harmon-standin")


def test_harmon_trains_exactly_mar_encoder_decoder_and_head(harmon):
    harmon = copy.deepcopy(harmon)            # set_trainable writes requires_grad: not into the module's fixture
    ar = {id(p) for p in harmon.ar_parameters()}
    head = {id(p) for p in harmon.head_parameters()}
    mar_enc_dec = {id(p) for n, p in harmon.mar.named_parameters() if not n.startswith("diffloss.")}
    assert ar == mar_enc_dec and head == {id(p) for p in harmon.mar.diffloss.parameters()}
    # LLM, projections, VAE: frozen, outside parameters(), untouched by set_trainable('all')
    frozen = harmon._frozen
    assert set(frozen) == {"llm", "proj_in", "proj_out", "vae"}
    set_trainable(harmon, "all")
    assert {id(p) for p in harmon.parameters()} == ar | head
    assert not any(p.requires_grad for m in frozen.values() for p in m.parameters())
    assert not any(k.startswith(("llm.", "proj_", "vae.")) for k in harmon.state_dict())


def test_nova_trains_the_transformer_head_is_the_diffusion_mlp():
    m = load_model("nova-standin")
    head = {id(p) for p in m.transformer.image_decoder.parameters()}
    assert {id(p) for p in m.head_parameters()} == head
    assert {id(p) for p in m.ar_parameters()} == {id(p) for p in m.transformer.parameters()} - head
    assert set(m._frozen) == {"vae", "text_encoder"}
    assert all(k.startswith("transformer.") for k in m.state_dict())


def test_deepcopy_shares_frozen_parts_and_to_moves_them(harmon):
    ref = copy.deepcopy(harmon)
    assert ref._frozen["llm"] is harmon._frozen["llm"] and ref.mar is not harmon.mar
    m = load_model("nova-standin").to(dtype=torch.bfloat16)
    assert next(m._frozen["vae"].parameters()).dtype == torch.bfloat16


def test_schedules_follow_the_official_respacing(harmon):
    ts = space_timesteps(1000, 25)
    assert ts[:3] == [0, 42, 83] and ts[-1] == 999 and len(ts) == 25
    assert harmon.schedule.timesteps.tolist() == [999, 749, 500, 250, 0]   # 5-step stand-in
    nova = load_model("nova-standin", sampling={"ar_steps": 4, "diffusion_steps": 25, "cfg_scale": 5.0})
    assert nova.schedule.timesteps[:2].tolist() == [960, 920] and int(nova.schedule.timesteps[-1]) == 0
    assert nova.sampling.cfg_scale == 5.0 and not nova.learned_variance and harmon.learned_variance


def test_paper_sampling_defaults():
    from marpipe.models.harmon import GENERATION_TEMPLATE, HARMON_SAMPLING, NEGATIVE_PROMPT
    from marpipe.models.nova import NOVA_SAMPLING
    assert NOVA_SAMPLING == {"ar_steps": 64, "diffusion_steps": 25, "cfg_scale": 5.0}
    assert HARMON_SAMPLING == {"ar_steps": 64, "diffusion_steps": 25, "cfg_scale": 3.0}
    assert GENERATION_TEMPLATE.format(text="a cat") == "Generate an image: a cat"
    assert NEGATIVE_PROMPT == "Generate an image."


def test_harmon_prompts_use_the_chat_template(harmon, monkeypatch):
    seen = []
    enc = harmon.tokenizer.encode
    monkeypatch.setattr(harmon.tokenizer, "encode", lambda text, **kw: (seen.append(text), enc(text, **kw))[1])
    p = harmon.encode_prompts(["a cat", "two dogs on a red sofa"])
    harmon.encode_negative(1)
    monkeypatch.undo()
    assert seen[0] == CHAT_TEMPLATE.format(input="Generate an image: a cat")
    assert seen[-1] == CHAT_TEMPLATE.format(input="Generate an image.")
    assert p.pad[0].any() and not p.pad[1].any()      # right padding of the shorter prompt


def test_harmon_standin_folder_writes_the_tied_lm_head_once_and_loads(tmp_path):
    folder = save_harmon_standin(tmp_path / "harmon")
    keys = set(load_file(str(folder / "model.safetensors")))
    assert "llm.model.embed_tokens.weight" in keys and "llm.lm_head.weight" not in keys   # as save_pretrained
    m = HarmonMAR.from_pretrained(folder, device="cpu", dtype=torch.float32)
    llm = m._frozen["llm"]
    assert llm.lm_head.weight is llm.model.embed_tokens.weight


def test_harmon_mask_counts_are_the_official_floored_schedule(harmon):
    from marpipe.grpo import harmon_mask_counts
    assert harmon.mask_counts(4) == harmon_mask_counts(harmon.num_tokens, 4)
    assert harmon.mask_counts(harmon.sampling.ar_steps) == harmon_mask_counts(16, 4) == [2, 3, 5, 6]
    assert HarmonMAR.mask_counts(type("M", (), {"num_tokens": 1024})(), 64)[:6] == [1, 1, 1, 2, 3, 4]


def test_harmon_decode_is_the_official_8bit_image(harmon):
    """``HarmonModel.decode`` then ``torch.clamp(127.5 * x + 128.0, 0, 255).to(uint8)`` (the official
    scripts), as float ``/ 255``; in the VAE's dtype."""
    from marpipe.io.files import to_uint8
    tokens = torch.randn(2, harmon.num_tokens, harmon.token_dim, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16):
        m = copy.deepcopy(harmon).to(dtype=dtype)
        vae = m._frozen["vae"]
        x = vae.decode(m.tokens_to_latents(tokens.to(dtype) / m.vae_scale))
        official = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)
        img = m.decode(tokens)
        assert img.dtype == torch.float32 and torch.equal(img, official.float() / 255)
        assert (to_uint8(img) == official.permute(0, 2, 3, 1).numpy()).all()


def test_harmon_generation_size_comes_from_sampling():
    m = load_model("harmon-standin", sampling={"ar_steps": 2, "diffusion_steps": 5, "cfg_scale": 3.0, "image_size": 32})
    assert (m.image_size, m.grid, m.num_tokens) == (32, (2, 2), 4)
    assert m.decode(torch.zeros(1, 4, m.token_dim)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        load_model("harmon-standin", sampling={"ar_steps": 2, "diffusion_steps": 5, "cfg_scale": 3.0, "image_size": 40})


def test_strict_loading_rejects_missing_unexpected_and_reshaped_keys(tmp_path):
    folder = save_nova_standin(tmp_path / "nova")
    f = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    bad = dict(sd)
    bad.pop("image_decoder.head.weight")
    bad["image_decoder.extra.weight"] = torch.zeros(1)
    save_file(bad, str(f))
    write_manifest(folder)
    with pytest.raises(ValueError, match="1 missing .*image_decoder.head.weight.*1 unexpected .*image_decoder.extra"):
        NovaMAR.from_pretrained(folder, device="cpu", dtype=torch.float32)


def test_loading_refuses_a_tampered_folder(tmp_path):
    folder = save_harmon_standin(tmp_path / "harmon")
    sd = load_file(str(folder / "model.safetensors"))
    sd["mar.mask_token"] = sd["mar.mask_token"] + 1
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ManifestError, match="model.safetensors does not match"):
        HarmonMAR.from_pretrained(folder, device="cpu", dtype=torch.float32)


def test_standin_folders_declare_their_architecture_and_say_they_are_not_real(tmp_path):
    nova = save_nova_standin(tmp_path / "nova")
    assert json.loads((nova / "model_index.json").read_text())["_class_name"] == "NovaStandinPipeline"
    assert "NOT the real NOVA" in NovaMAR.from_pretrained(nova, device="cpu", dtype=torch.float32).source
    harmon = save_harmon_standin(tmp_path / "harmon")
    assert json.loads((harmon / "config.json").read_text())["architectures"] == ["HarmonStandin"]
    assert "NOT the real Harmon" in HarmonMAR.from_pretrained(harmon, device="cpu", dtype=torch.float32).source
    with pytest.raises(ValueError, match=r"declares no architecture \(config.json architectures / model_type"):
        HarmonMAR.from_pretrained(nova, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("family", ["nova", "harmon"])
def test_an_unregistered_architecture_is_one_clear_error(tmp_path, family):
    save = save_nova_standin if family == "nova" else save_harmon_standin
    folder = save(tmp_path / family)
    declared = folder / ("model_index.json" if family == "nova" else "config.json")
    meta = json.loads(declared.read_text())
    meta.update({"_class_name": "NOVAPipelineXL"} if family == "nova" else
                {"architectures": ["HarmonModelXL"], "model_type": "harmon_xl"})
    declared.write_text(json.dumps(meta))
    write_manifest(folder)
    with pytest.raises(ValueError) as err:
        load_model(f"{family}:{folder}")
    msg = str(err.value)
    names = "'NOVAPipelineXL'" if family == "nova" else "'HarmonModelXL' / 'harmon_xl'"
    registered = "NOVAPipeline, NovaStandinPipeline" if family == "nova" else "HarmonModel, HarmonStandin, harmon"
    assert msg.startswith(f"{folder}: declares the architecture {names}")
    assert f"registered: {registered})" in msg and "register_architecture" in msg
    assert f"python -m marpipe.models.download {family}" in msg


def test_marpipe_never_imports_the_test_bed(tmp_path):
    """Every ``marpipe`` module imported in a fresh interpreter: no ``testbed`` module comes with them,
    and the stand-in specs and folders are unknown until ``testbed.standins`` registers them."""
    code = """
import importlib, pkgutil, sys
import marpipe
for m in pkgutil.walk_packages(marpipe.__path__, "marpipe."):
    if not m.name.endswith(".__main__"):
        importlib.import_module(m.name)
assert not [n for n in sys.modules if n.split(".")[0] == "testbed"], "marpipe imported the test bed"
from marpipe.models import registry
assert registry.declared_architectures("nova", sys.argv[1]) == ["NovaStandinPipeline"]
for spec in ("nova-standin", "harmon-standin", "nova:" + sys.argv[1]):
    try:
        registry.load_model(spec)
    except ValueError as e:
        assert "unknown model spec" in str(e) or "no nova builder is registered" in str(e), e
    else:
        raise AssertionError(spec + " loaded without the test bed")
import testbed.standins
assert "NOT the real NOVA" in registry.load_model("nova:" + sys.argv[1]).source
assert "NOT the real Harmon" in registry.load_model("harmon-standin").source
"""
    folder = save_nova_standin(tmp_path / "nova")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def test_gradient_checkpointing_gives_the_same_gradients():
    from marpipe.config import GRPOConfig
    from marpipe.loss import mar_grpo_loss
    from marpipe.rollout import RolloutPlan, rollout
    grads = []
    for ckpt in (False, True):
        m = load_model("nova-standin", gradient_checkpointing=ckpt)
        ro = rollout(m, ["a cat", "a dog"], 2, RolloutPlan.sample(4, 5, 2, 2, 1, seed=1), seed=0)
        cfg = GRPOConfig(group_size=2, prompts_per_step=2, train_ar_steps=2, train_diffusion_steps=2, beta=0.0)
        params = set_trainable(m, "all")
        mar_grpo_loss(m, ro, torch.tensor([1.0, -1.0, 0.5, -0.5]), cfg).loss.backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_registry_specs(tmp_path):
    tiny = load_model("tiny-harmon", image_size=16, patch=4, width=32, depth=1, heads=2, head_width=16,
                      head_blocks=1)
    assert isinstance(tiny, TinyMAR) and tiny.learned_variance
    tiny.save(tmp_path / "t.safetensors")
    assert isinstance(load_model(str(tmp_path / "t.safetensors")), TinyMAR)
    with pytest.raises(FileNotFoundError, match="download the model first"):
        load_model(f"nova:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unknown model spec"):
        load_model("sdxl")
    with pytest.raises(ManifestError, match="no MANIFEST"):
        load_model(f"harmon:{tmp_path}")
