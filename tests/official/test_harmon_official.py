"""marpipe's Harmon adapter against the OFFICIAL Harmon code.

The official code is the ``trust_remote_code`` files of the HF repo ``wusize/Harmon-1_5B``
(``harmon-remote-code/``, as copied into AMAP-ML/mar-grpo @fcb7969) and github wusize/Harmon @4eb6087
(``Harmon/``), found through the ``official`` fixture. ``testbed/official/harmon_tiny.py`` builds the
official ``HarmonModel`` at the smallest size its code allows (tiny Qwen2, ``mar_base``, the fixed KL-16
VAE) with random weights, saves it with ``save_pretrained`` next to an offline Qwen2-style tokenizer and
marpipe's manifest, and marpipe loads that folder exactly as the pipeline does
(``load_model("harmon:<dir>")``). The builder's own ``HarmonModel`` is the reference.

The hub fixture of ``make rehearse`` (``testbed.hub``) is smaller still: ``build_tiny_harmon(tiny_arch=True)``
appends a declared block to ``mar.py`` and ``vae.py`` (tiny MAR widths from ``config.json``, a narrow VAE);
the ``tiny_arch`` tests check that the blocks change nothing else and that marpipe loads that folder as
the official model.

Test-time changes to the official code, all declared where they are made:

* ``modeling_harmon.py`` line 238 is re-indented (IndentationError as shipped; see harmon_tiny.py);
* ``HarmonModel.sample`` / ``DiffLoss.sample`` call ``.cuda()``: on a machine without CUDA the full
  sampling run maps ``Tensor.cuda`` to the identity while it runs;
* ``HarmonModel.sample``'s KV cache uses the transformers-4 API (``DynamicCache.from_legacy_cache()``,
  ``for keys, values in cache``), which transformers >= 4.56 no longer has (5.x: no
  ``from_legacy_cache``, iteration yields 3-tuples). Where it is missing the full run gets the same
  empty cache (``DynamicCache()``) and ``curtail_cache`` with the official body but 3-tuple unpacking;
  under transformers 4.45.2 (Harmon's README pin) the run is unpatched.

Tolerance: float32 rounding. Every comparison prints its max abs and relative difference
(``pytest -s``).
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import json
import math
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from marpipe import diffusion as D
from marpipe.models.protocol import Prompts
from testbed.official import harmon_tiny

for _mod in ("einops", "timm", "scipy"):
    pytest.importorskip(_mod, reason=f"Harmon's remote code imports {_mod} (envs/harmon-requirements.txt)")

PROMPTS = ["a red circle on the left", "two blue squares"]
K_STEPS = 4                      # AR steps of the recorded official run
CFG = 3.0                        # Harmon's guidance (official scripts / mar-grpo: 3.0, constant)
TOL = 2e-5                       # float32 rounding, relative to max(1, |official|)
SAMPLING = dict(harmon_tiny.TINY_SAMPLING, ar_steps=2)   # the conformance suite: 2 AR steps keep it short

# the official MAR decoder / diffusion MLP call torch.utils.checkpoint without use_reentrant (a warning in
# torch 2.14); the tiny config keeps Harmon's grad_checkpointing=True, so the reference model says so
pytestmark = pytest.mark.filterwarnings("ignore:torch.utils.checkpoint. the use_reentrant parameter:UserWarning",
                                        "ignore:None of the inputs have requires_grad=True:UserWarning")


def _diff(name: str, ours: torch.Tensor, official: torch.Tensor, tol: float = TOL) -> float:
    ours, official = ours.detach().double(), official.detach().double()
    assert ours.shape == official.shape, f"{name}: shape {tuple(ours.shape)} vs official {tuple(official.shape)}"
    err = float((ours - official).abs().max()) if ours.numel() else 0.0
    big = float(official.abs().max()) if official.numel() else 0.0
    rel = err / big if big else 0.0
    scale = max(1.0, big)
    print(f"[harmon official] {name:<58s} max |diff| = {err:.2e}  rel = {rel:.2e}  (|official| <= {big:.3g})")
    assert err <= tol * scale, f"{name}: max abs diff {err:.3e} > {tol * scale:.1e}"
    return err


# ------------------------------------------------------------------ official code, loaded from a tmp copy
def _import_remote_code(official: Path, tmp: Path):
    """The remote-code files as a package (relative imports as transformers gives them), without
    transformers' module cache: for the tests that need the official functions but no model."""
    name = f"harmon_remote_{uuid.uuid4().hex[:8]}"
    folder = tmp / name
    harmon_tiny.copy_remote_code(official / harmon_tiny.REMOTE_CODE, folder)
    (folder / "__init__.py").write_text("")
    import sys
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    return types.SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}") for m in
                                    ("modeling_harmon", "mar", "misc", "respace", "gaussian_diffusion")})


@pytest.fixture(scope="module")
def remote(official, tmp_path_factory):
    if not (official / harmon_tiny.REMOTE_CODE / "modeling_harmon.py").is_file():
        pytest.skip(f"official Harmon remote code not found at {official / harmon_tiny.REMOTE_CODE}")
    return _import_remote_code(official, tmp_path_factory.mktemp("harmon-remote"))


@pytest.fixture(scope="module")
def built(remote, official, tmp_path_factory):
    """``(folder, reference)``: the tiny official Harmon folder and the official ``HarmonModel`` it holds."""
    return harmon_tiny.build_tiny_harmon(official, tmp_path_factory.mktemp("harmon-tiny"))


@pytest.fixture(scope="module")
def ref(built):
    return built[1]


@pytest.fixture(scope="module")
def model(built):
    from marpipe.models.registry import load_model
    return load_model(f"harmon:{built[0]}", device="cpu", dtype=torch.float32, sampling=SAMPLING).eval()


def _official_text_helpers(official: Path):
    """github wusize/Harmon: ``Harmon.prepare_text_conditions`` (``src/models/harmon.py``) and the
    ``prompt_template`` of ``configs/models/qwen2_5_1_5b_kl16_mar_h.py``, taken from the source files
    with ``ast`` (the modules import mmengine / xtuner, which are not needed for these two)."""
    from torch.nn.utils.rnn import pad_sequence
    src_path = official / "Harmon" / "src" / "models" / "harmon.py"
    tree = ast.parse(src_path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Harmon")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "prepare_text_conditions")
    ns = {"torch": torch, "pad_sequence": pad_sequence}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(src_path), "exec"), ns)
    cfg_path = official / "Harmon" / "configs" / "models" / "qwen2_5_1_5b_kl16_mar_h.py"
    node = next(n for n in ast.parse(cfg_path.read_text()).body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", None) == "prompt_template")
    template = eval(compile(ast.Expression(node.value), str(cfg_path), "eval"), {"dict": dict})
    return ns["prepare_text_conditions"], template


def _official_batch(model, template, prompts, negative):
    """The official CFG batch ``[cond; uncond]`` as mar-grpo's ``generate_image_with_logp`` and the HF
    model card build it: ``tokenizer(prompts, add_special_tokens=True, return_tensors='pt', padding=True)``."""
    texts = [template["INSTRUCTION"].format(input=p) for p in prompts]
    texts += [template["INSTRUCTION"].format(input=negative)] * len(prompts)
    return model.tokenizer(texts, add_special_tokens=True, return_tensors="pt", padding=True)


def _ids_of(emb: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Token ids back from embeddings ``[M, D]`` (the tiny table's rows are distinct)."""
    hit = (emb[:, None, :] == table[None]).all(-1)
    assert bool((hit.sum(-1) == 1).all()), "an embedding is not exactly one row of the table"
    return hit.float().argmax(-1)


def _cfg_prompts(model, prompts):
    from marpipe.models.harmon import NEGATIVE_PROMPT
    return Prompts.cat([model.encode_prompts(prompts), model.encode_negative(len(prompts))]), NEGATIVE_PROMPT


# ------------------------------------------------------------------ the folder and the suite
def test_tiny_folder_is_a_save_pretrained_folder_and_loads_with_the_tie(built, model):
    """``HarmonModel.save_pretrained`` writes Qwen2's tied ``lm_head.weight`` once; marpipe's strict
    loader accepts exactly that declared tie (and still loads every other key)."""
    from safetensors import safe_open

    from marpipe.models.download import load_weights, read_manifest, tied_keys
    folder, ref = built
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "llm.model.embed_tokens.weight" in keys and "llm.lm_head.weight" not in keys
    assert set(ref.state_dict()) - keys == {"llm.lm_head.weight"}
    assert tied_keys(ref) == {"llm.lm_head.weight": "llm.model.embed_tokens.weight"}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"]["AutoModel"] == "modeling_harmon.HarmonModel" and cfg["mar"]["type"] == "mar_base"
    assert {"modeling_harmon.py", "mar.py", "diffloss.py", "vae.py", "tokenizer.json",
            "tokenizer_config.json"} <= set(read_manifest(folder))
    llm = model._frozen["llm"]
    assert llm.lm_head.weight is llm.model.embed_tokens.weight
    state = load_weights([folder / "model.safetensors"])
    for k, v in state.items():         # marpipe's model holds the file's tensors
        part, rest = k.split(".", 1)
        mod = model.mar if part == "mar" else model._frozen[part]
        assert torch.equal(mod.state_dict()[rest], v), k
    with pytest.raises(RuntimeError, match="lm_head"):      # what a plain strict load says
        ref.load_state_dict(state, strict=True)


def test_conformance_suite_passes_on_the_official_model(model):
    """``marpipe.models.conformance.check_model`` on the adapter over the official ``HarmonModel``."""
    from marpipe.models.conformance import check_model, format_results
    results = check_model(model)
    print(format_results(results))
    failed = [f"{n}: {d}" for n, ok, d in results if not ok]
    assert not failed, failed


# ------------------------------------------------------------------ the hub fixture's tiny architecture
def _import_folder(folder: Path):
    """A folder of remote-code files as a package (see :func:`_import_remote_code`)."""
    import sys
    name = f"harmon_remote_{uuid.uuid4().hex[:8]}"
    (folder / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    return types.SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}") for m in ("modeling_harmon", "mar", "vae")})


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_tiny_arch_blocks_only_append_and_keep_the_real_sizes_by_default(official, tmp_path):
    """testbed.hub's Harmon fixture (``tiny_arch``) changes the remote code only by the two declared
    blocks at the end of ``mar.py`` and ``vae.py``; without the fixture's ``mar`` keys its ``mar_base`` is
    the real one, and its VAE ``Encoder``/``Decoder`` at the real width are the real ones (same
    parameter shapes, built on the meta device)."""
    plain, tiny = tmp_path / "plain", tmp_path / "tiny"
    names = harmon_tiny.copy_remote_code(official / harmon_tiny.REMOTE_CODE, plain)
    harmon_tiny.copy_remote_code(official / harmon_tiny.REMOTE_CODE, tiny)
    harmon_tiny.tiny_arch_remote_code(tiny)
    for n in names:
        a, b = (plain / n).read_text(), (tiny / n).read_text()
        if n in ("mar.py", "vae.py"):
            assert b.startswith(a.rstrip("\n")) and b[len(a.rstrip("\n")):].lstrip("\n").startswith(harmon_tiny.FIXTURE_MARK)
            assert b.count(harmon_tiny.FIXTURE_MARK) == 1
        else:
            assert a == b, n
    with pytest.raises(RuntimeError, match="already holds"):
        harmon_tiny.tiny_arch_remote_code(tiny)
    p, t = _import_folder(plain), _import_folder(tiny)
    with torch.device("meta"):
        assert _shapes(t.mar.mar_base()) == _shapes(p.mar.mar_base())
        for cls in ("Encoder", "Decoder"):
            assert _shapes(getattr(t.vae, cls)(ch_mult=(1, 1, 2, 2, 4), z_channels=16, **harmon_tiny.REAL_VAE)) == \
                _shapes(getattr(p.vae, cls)(ch_mult=(1, 1, 2, 2, 4), z_channels=16))
        arch = {**harmon_tiny.TINY_MAR, **harmon_tiny.TINY_MAR_ARCH}
        arch.pop("type")
        small = t.mar.mar_base(**arch)
    assert small.encoder_embed_dim == 32 and len(small.encoder_blocks) == 2 and len(small.decoder_blocks) == 2
    assert type(small) is t.mar.MAR         # the official class (the block adds a factory, no class)
    with pytest.raises(TypeError, match="encoder_embed_dim"):         # the real mar_base takes no widths
        with torch.device("meta"):
            p.mar.mar_base(encoder_embed_dim=32)


@torch.no_grad()
def test_tiny_arch_folder_is_tiny_and_marpipe_loads_it_as_the_official_model(official, tmp_path):
    """The hub fixture's folder (``build_tiny_harmon(tiny_arch=True)``, what ``testbed.hub.official``
    serves as ``wusize/Harmon-1_5B``): ~3M parameters (a training checkpoint of the trained MAR parts is
    ~1 MB), loaded by marpipe's adapter (strictly, from the folder's own remote code), whose AR step,
    head and decode equal the official ``HarmonModel``'s."""
    from marpipe.models.registry import load_model
    folder, ref = harmon_tiny.build_tiny_harmon(official, tmp_path / "tiny", tiny_arch=True)
    n = sum(p.numel() for p in ref.parameters())
    assert n < 4_000_000 and (folder / "model.safetensors").stat().st_size < 16e6
    assert sum(p.numel() for p in ref.mar.parameters()) < 200_000
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["mar"]["type"] == "mar_base" and cfg["mar"]["encoder_embed_dim"] == 32
    model = load_model(f"harmon:{folder}", device="cpu", dtype=torch.float32, sampling=SAMPLING).eval()
    assert model.mar.encoder_embed_dim == 32 and model._frozen["vae"].encoder.ch == harmon_tiny.TINY_VAE["ch"]
    for k, v in ref.state_dict().items():
        part, rest = k.split(".", 1)
        mine = (model.mar if part == "mar" else model._frozen[part]).state_dict()[rest]
        assert torch.equal(mine, v), k
    ours_p, _ = _cfg_prompts(model, PROMPTS)
    B, N, C = ours_p.emb.shape[0], model.num_tokens, model.token_dim
    gen = torch.Generator().manual_seed(5)
    canvas = torch.randn(B, N, C, generator=gen)
    known = torch.zeros(B, N, dtype=torch.bool)
    known[:, torch.randperm(N, generator=gen)[: N // 2]] = True
    z = model.ar_forward(canvas, known, ours_p)
    z_off = _official_z(ref, canvas.clone(), (~known).float(), ours_p.emb, (~ours_p.pad).long(), cached=False)
    _diff("tiny arch: AR z", z, z_off)
    x = torch.randn(B * N, C, generator=gen)
    step = torch.zeros(B * N, dtype=torch.long)
    eps, v = model.head(x, step, z.reshape(B * N, -1))
    raw = ref.mar.diffloss.net(x, torch.tensor(ref.mar.diffloss.gen_diffusion.timestep_map)[
        torch.full((B * N,), model.sampling.diffusion_steps - 1)], z.reshape(B * N, -1))
    _diff("tiny arch: head [eps; v]", torch.cat([eps, v], 1), raw)
    m = n_ = model.grid[0]
    off = ref.decode(canvas.clone().view(B, m, n_, -1))
    _diff("tiny arch: decode", model._frozen["vae"].decode(model.tokens_to_latents(canvas / model.vae_scale)), off)


# ------------------------------------------------------------------ prompts
def test_prompt_ids_and_embeddings_match_official(official, ref, model):
    """Official: github ``Harmon.prepare_text_conditions`` (chat template ``INSTRUCTION`` of the Harmon
    config, ``tokenizer.encode(add_special_tokens=True)``, eos padding, attention mask), the batched
    ``tokenizer(..., padding=True)`` of mar-grpo ``generate_image_with_logp`` / the HF model card, and
    ``HarmonModel.sample``'s ``self.llm.get_input_embeddings()(input_ids)``."""
    from marpipe.models.harmon import GENERATION_TEMPLATE, NEGATIVE_PROMPT
    prepare, template = _official_text_helpers(official)
    fake = types.SimpleNamespace(prompt_template=template, tokenizer=model.tokenizer, device=torch.device("cpu"))
    table = ref.llm.get_input_embeddings().weight
    for p in PROMPTS:
        off = prepare(fake, GENERATION_TEMPLATE.format(text=p), cfg_prompt=NEGATIVE_PROMPT)
        ours = Prompts.cat([model.encode_prompts([p]), model.encode_negative(1)])
        assert torch.equal(~ours.pad, off["attention_mask"]), "valid positions differ"
        valid = off["attention_mask"]
        assert torch.equal(_ids_of(ours.emb[valid], table), off["input_ids"][valid]), "prompt ids differ"
        _diff(f"prompt embeddings ({p!r}) [prepare_text_conditions]", ours.emb[valid],
              ref.llm.get_input_embeddings()(off["input_ids"])[valid], tol=0.0)
    batch = _official_batch(model, template, [GENERATION_TEMPLATE.format(text=p) for p in PROMPTS], NEGATIVE_PROMPT)
    ours, _ = _cfg_prompts(model, PROMPTS)
    valid = batch["attention_mask"].bool()
    assert torch.equal(~ours.pad, valid)
    assert torch.equal(_ids_of(ours.emb[valid], table), batch["input_ids"][valid])
    print(f"[harmon official] prompt ids identical: {batch['input_ids'][0][valid[0]].tolist()[:12]} ...")


# ------------------------------------------------------------------ one AR step
def _new_cache():
    """The empty cache of ``HarmonModel.sample``: ``DynamicCache.from_legacy_cache()`` where it exists
    (transformers <= 4.55), else ``DynamicCache()`` (the same empty cache)."""
    from transformers.cache_utils import DynamicCache
    try:
        return DynamicCache.from_legacy_cache(), True
    except (AttributeError, TypeError):
        return DynamicCache(), False


def _official_z(ref, tokens, mask, embeds, attn, cached: bool):
    """``HarmonModel.forward_mae_encoder`` (+ the prompt prefill of ``HarmonModel.sample`` when
    ``cached``) and ``MAR.forward_mae_decoder``, as ``HarmonModel.sample`` calls them."""
    b, n_tok, _ = tokens.shape
    m = n = int(math.isqrt(n_tok))
    if cached:
        cache, _ = _new_cache()
        out = ref.llm_model(inputs_embeds=embeds, attention_mask=None, position_ids=None,
                            past_key_values=cache, return_dict=True, use_cache=True)
        x_enc = ref.forward_mae_encoder(tokens.view(b, m, n, -1), mask, past_key_values=out.past_key_values,
                                        attention_mask=attn)
    else:
        x_enc = ref.forward_mae_encoder(tokens.view(b, m, n, -1), mask, inputs_embeds=embeds, attention_mask=attn)
    return ref.mar.forward_mae_decoder(x_enc, mask, image_shape=(m, n))


@torch.no_grad()
def test_ar_step_matches_official(official, ref, model):
    """Official: ``HarmonModel.forward_mae_encoder`` (``extract_visual_feature`` -> ``MAR.forward_mae_encoder``,
    ``proj_in``, buffers to the end, ``prepare_forward_input``, the Qwen2 ``llm_model``, ``proj_out``) and
    ``MAR.forward_mae_decoder``, uncached and through the prompt KV cache as in ``HarmonModel.sample``,
    on the CFG batch ``[cond; uncond]``."""
    from marpipe.models.harmon import GENERATION_TEMPLATE
    _, template = _official_text_helpers(official)
    ours_p, neg = _cfg_prompts(model, PROMPTS)
    batch = _official_batch(model, template, [GENERATION_TEMPLATE.format(text=p) for p in PROMPTS], neg)
    embeds = ref.llm.get_input_embeddings()(batch["input_ids"])
    B, N, C = 2 * len(PROMPTS), model.num_tokens, model.token_dim
    gen = torch.Generator().manual_seed(5)
    canvas = torch.randn(len(PROMPTS), N, C, generator=gen).repeat(2, 1, 1)
    for n_known in (0, 5, N - 1):
        order = torch.randperm(N, generator=gen)
        known = torch.zeros(B, N, dtype=torch.bool)
        known[:, order[:n_known]] = True
        mask = (~known).float()                             # official: 1 = still unknown
        z = model.ar_forward(canvas, known, ours_p)
        for cached in (False, True):
            z_off = _official_z(ref, canvas.clone(), mask, embeds, batch["attention_mask"], cached)
            _diff(f"AR z, {n_known:2d} known, {'cached' if cached else 'uncached'} official path", z, z_off)


# ------------------------------------------------------------------ head and posterior
@torch.no_grad()
def test_head_and_learned_range_posterior_match_official(ref, model):
    """Official: ``SimpleMLPAdaLN.forward`` / ``forward_with_cfg`` through ``SpacedDiffusion``'s
    ``_WrappedModel`` (timestep map) and ``GaussianDiffusion.p_mean_variance`` (learned range,
    ``clip_denoised=False``, as ``DiffLoss.sample`` uses it) at every sampling step."""
    from marpipe.rollout import _head_step
    net, gd = ref.mar.diffloss.net, ref.mar.diffloss.gen_diffusion
    T, C = model.sampling.diffusion_steps, model.token_dim
    assert gd.num_timesteps == T
    gen = torch.Generator().manual_seed(6)
    M = 6
    z = torch.randn(2 * M, ref.mar.decoder_embed_dim, generator=gen)
    zc, zu = z[:M], z[M:]
    x = torch.randn(M, C, generator=gen) * 2
    tmap = torch.tensor(gd.timestep_map)
    for i in range(T):
        t = torch.full((M,), T - 1 - i, dtype=torch.long)          # official index: T-1 = noisiest
        step = torch.full((M,), i, dtype=torch.long)                # marpipe index: 0 = noisiest
        eps, v = model.head(x, step, zc)
        raw = net(x, tmap[t], zc)
        assert raw[:, :C].abs().max() > 0 and raw[:, C:].abs().max() > 0
        _diff(f"head [eps; v], step {i} (t={int(tmap[t[0]])})", torch.cat([eps, v], 1), raw)
        out = gd.p_mean_variance(net, x, t, clip_denoised=False, model_kwargs=dict(c=zc))
        mean = D.posterior_mean(model.schedule, step, x, eps)
        log_var = D.posterior_log_var(model.schedule, step, x, v)
        _diff(f"posterior mean, step {i}", mean, out["mean"])
        _diff(f"posterior log-variance (learned range), step {i}", log_var, out["log_variance"])
        _diff(f"posterior variance (learned range), step {i}", log_var.exp(), out["variance"])
        # guided: [cond; uncond] through forward_with_cfg, as DiffLoss.sample does with cfg != 1
        out = gd.p_mean_variance(net.forward_with_cfg, torch.cat([x, x]), torch.cat([t, t]), clip_denoised=False,
                                 model_kwargs=dict(c=z, cfg_scale=CFG))
        g_mean, g_log_var, _ = _head_step(model, x, i, zc, zu, CFG)
        _diff(f"CFG {CFG} posterior mean, step {i}", g_mean, out["mean"][:M])
        _diff(f"CFG {CFG} posterior log-variance, step {i}", g_log_var, out["log_variance"][:M])


def test_schedules_match_official_respacing(remote):
    """Official: ``misc.create_diffusion(timestep_respacing=str(T), noise_schedule='cosine')`` (the
    ``gen_diffusion`` of ``DiffLoss``) and ``respace.space_timesteps``: timesteps, alpha-bars, betas,
    posterior coefficients and the clipped posterior log-variance."""
    from marpipe.models.harmon import space_timesteps
    from marpipe.models.nova import schedule_from_alphas_cumprod
    train = remote.misc.create_diffusion(timestep_respacing="", noise_schedule="cosine")
    for T in (1, 5, 25, 50, 100, 250, 1000):
        assert space_timesteps(1000, T) == sorted(remote.respace.space_timesteps(1000, [T])), T
        if T == 1:
            continue
        gd = remote.misc.create_diffusion(timestep_respacing=str(T), noise_schedule="cosine")
        s = schedule_from_alphas_cumprod(torch.as_tensor(train.alphas_cumprod), space_timesteps(1000, T)[::-1])
        rev = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)[::-1].copy())
        assert s.timesteps.tolist() == gd.timestep_map[::-1]
        # marpipe index i (0 = noisiest) is the official spaced index T-1-i; the official posterior
        # variance at t=0 is 0, which marpipe floors (only the fixed-variance path would use it)
        for name, ours, off in (("alpha-bar", s.abar, rev(gd.alphas_cumprod)), ("beta", s.beta, rev(gd.betas)),
                                ("coef x0", s.coef_x0, rev(gd.posterior_mean_coef1)),
                                ("coef xt", s.coef_xt, rev(gd.posterior_mean_coef2)),
                                ("posterior variance", s.post_var[:-1], rev(gd.posterior_variance)[:-1])):
            err = float((ours - off).abs().max())
            assert err <= 1e-12, (T, name, err)
        min_log = D.posterior_log_var(s, torch.arange(T), torch.zeros(T, 1, dtype=torch.float64),
                                      -torch.ones(T, 1, dtype=torch.float64))[:, 0]
        max_log = D.posterior_log_var(s, torch.arange(T), torch.zeros(T, 1, dtype=torch.float64),
                                      torch.ones(T, 1, dtype=torch.float64))[:, 0]
        assert float((min_log - rev(gd.posterior_log_variance_clipped)).abs().max()) <= 1e-12
        assert float((max_log - rev(np.log(gd.betas))).abs().max()) <= 1e-12
    print("[harmon official] respacing, alpha-bars, betas, posterior coefficients and learned-range bounds: "
          "equal to float64 rounding for T in 5, 25, 50, 100, 250, 1000")


# ------------------------------------------------------------------ mask schedule (and CFG schedule)
def _instrumented_sample(remote, n_tokens, steps, cfg=1.0, cfg_schedule="constant", seed=0):
    """Run the official ``HarmonModel.sample`` loop with its networks replaced by stubs that record
    what the loop asks of them: how many tokens it predicts at each step (``DiffLoss.sample``'s
    input rows per image), how many are still masked going in, and the ``cfg_iter`` it passes. The
    mask schedule, ``mask_by_order`` and ``MAR.sample_orders`` run as they are."""
    m = int(math.isqrt(n_tokens))
    assert m * m == n_tokens
    bsz = 2 if cfg != 1.0 else 1
    rec = {"pred": [], "masked": [], "cfg": []}
    cpu = torch.device("cpu")
    mar = types.SimpleNamespace(device=cpu, seq_len=n_tokens)
    mar.sample_orders = types.MethodType(remote.mar.MAR.sample_orders, mar)

    def encoder(x, mask, **context):
        rec["masked"].append(int(mask[0].sum()))
        return torch.zeros(x.shape[0], 1, 4)

    def sample(z, temperature, cfg_iter):
        rec["pred"].append(z.shape[0] // bsz)
        rec["cfg"].append(float(cfg_iter))
        return torch.zeros(z.shape[0], 16)
    mar.forward_mae_decoder = lambda x, mask, image_shape=None, x_con=None: torch.zeros(mask.shape[0], mask.shape[1], 4)
    mar.diffloss = types.SimpleNamespace(sample=sample)
    fake = types.SimpleNamespace(device=cpu, dtype=torch.float32, token_embed_dim=16, mar=mar,
                                 forward_mae_encoder=encoder, curtail_cache=lambda *a: None,
                                 decode=lambda tokens: tokens)
    np.random.seed(seed)
    remote.modeling_harmon.HarmonModel.sample(
        fake, inputs_embeds=torch.zeros(bsz, 3, 4), attention_mask=torch.ones(bsz, 3, dtype=torch.bool),
        num_iter=steps, cfg=cfg, cfg_schedule=cfg_schedule, past_key_values=object(), image_shape=(m, m))
    return rec


@pytest.mark.parametrize("n_tokens,steps", [(16, 4), (16, 16), (64, 64), (1024, 64), (1024, 25), (1024, 1024)])
def test_mask_counts_match_the_official_sampler(remote, n_tokens, steps):
    """Official: ``HarmonModel.sample``'s mask loop (``np.floor(m*n * cos(pi/2 (step+1)/num_iter))``,
    clamped to ``[1, masked - 1]``, ``mask_by_order``; the last step predicts the rest), run with stub
    networks; ``HarmonMAR.mask_counts`` must give its per-step counts."""
    from marpipe.models.harmon import HarmonMAR
    rec = _instrumented_sample(remote, n_tokens, steps)
    ours = HarmonMAR.mask_counts(types.SimpleNamespace(num_tokens=n_tokens), steps)
    assert ours == rec["pred"], (ours[:10], rec["pred"][:10])
    assert rec["masked"] == [n_tokens - sum(ours[:k]) for k in range(steps)]
    print(f"[harmon official] mask counts (N={n_tokens}, K={steps}) identical: {ours[:6]} ... {ours[-3:]}")


def test_cfg_schedule_official_default_is_constant(remote):
    """Official: ``HarmonModel.sample(cfg_schedule='constant')`` (its default; github
    ``scripts/batch_text2image.py`` default ``--cfg_schedule constant --cfg 3.0``; mar-grpo
    ``generate_image_with_logp`` passes ``cfg_schedule="constant"``, ``cfg_scale=3.0``) passes ``cfg`` to
    every step; 'linear' (MAR's class-conditional default) would ramp from about 1 to ``cfg``."""
    import inspect
    sig = inspect.signature(remote.modeling_harmon.HarmonModel.sample)
    assert sig.parameters["cfg_schedule"].default == "constant"
    const = _instrumented_sample(remote, 1024, 64, cfg=CFG)["cfg"]
    assert const == [CFG] * 64
    linear = _instrumented_sample(remote, 1024, 64, cfg=CFG, cfg_schedule="linear")["cfg"]
    print(f"[harmon official] cfg per step, constant: {const[:3]} ...; linear (not used): "
          f"{[round(c, 3) for c in linear[:3]]} ... {[round(c, 3) for c in linear[-2:]]}")


# ------------------------------------------------------------------ the official sampling run, replayed
@contextlib.contextmanager
def _cpu_and_cache_shims(harmon_cls):
    """Declared test-time shims for the full official run (see the module docstring): the ones
    ``marpipe bench gpu`` runs the official sampler under (``Tensor.cuda`` -> identity without CUDA;
    transformers >= 4.56's cache API for ``sample``'s ``from_legacy_cache()`` / ``curtail_cache``)."""
    from marpipe.models.real_size import harmon_sampler_shims
    with harmon_sampler_shims(harmon_cls):
        yield


@pytest.fixture(scope="module")
def official_run(official, ref, model):
    """One seeded ``HarmonModel.sample`` run (CFG 3 constant, K=4, temperature 1) on the tiny model,
    recorded: per AR step the tokens and mask going in, ``z``, the rows given to ``DiffLoss.sample``;
    per head step ``p_mean_variance``'s input and output; the decoded images."""
    from marpipe.models.harmon import GENERATION_TEMPLATE
    _, template = _official_text_helpers(official)
    neg = _cfg_prompts(model, PROMPTS[:1])[1]
    batch = _official_batch(model, template, [GENERATION_TEMPLATE.format(text=p) for p in PROMPTS], neg)
    rec = {"tokens": [], "mask": [], "z": [], "z_pred": [], "pmv": [], "dec_in": [], "images": None}
    mar, gd = ref.mar, ref.mar.diffloss.gen_diffusion
    f_enc, f_dec, f_sample, f_pmv, f_decode = (ref.forward_mae_encoder, mar.forward_mae_decoder,
                                                mar.diffloss.sample, gd.p_mean_variance, ref.decode)

    def enc(x, mask, **kw):
        rec["tokens"].append(x.reshape(x.shape[0], -1, x.shape[-1]).clone())
        rec["mask"].append(mask.clone())
        return f_enc(x, mask, **kw)

    def dec(*a, **kw):
        z = f_dec(*a, **kw)
        rec["z"].append(z.clone())
        return z

    def sample(z, *a, **kw):
        rec["z_pred"].append(z.clone())
        rec["pmv"].append([])
        return f_sample(z, *a, **kw)

    def pmv(model_fn, x, t, **kw):
        out = f_pmv(model_fn, x, t, **kw)
        rec["pmv"][-1].append((x.clone(), t.clone(), kw["model_kwargs"].get("cfg_scale"), out))
        return out

    def decode(z):
        rec["dec_in"].append(z.clone())
        return f_decode(z)
    ref.forward_mae_encoder, mar.forward_mae_decoder, mar.diffloss.sample = enc, dec, sample
    gd.p_mean_variance, ref.decode = pmv, decode
    try:
        torch.manual_seed(11)
        np.random.seed(11)
        with _cpu_and_cache_shims(type(ref)), torch.no_grad():
            images = ref.sample(**batch, num_iter=K_STEPS, cfg=CFG, cfg_schedule="constant", temperature=1.0,
                                progress=False, image_shape=model.grid)
    finally:
        for obj, name in ((ref, "forward_mae_encoder"), (mar, "forward_mae_decoder"), (mar.diffloss, "sample"),
                          (gd, "p_mean_variance"), (ref, "decode")):
            obj.__dict__.pop(name, None)
    rec["images"] = images
    return rec


@torch.no_grad()
def test_official_sampling_run_replayed_step_by_step(official_run, model):
    """Official: the whole ``HarmonModel.sample`` (CFG batch, shared orders, ``mask_by_order``,
    ``DiffLoss.sample`` with ``forward_with_cfg`` and ``p_sample_loop``): each AR step's ``z`` from the
    recorded tokens and mask, the number of tokens predicted per step, each head step's guided
    posterior mean and learned-range log-variance from the recorded ``x_t``."""
    from marpipe.rollout import _head_step
    rec, B = official_run, len(PROMPTS)
    cond_neg, _ = _cfg_prompts(model, PROMPTS)
    counts = model.mask_counts(K_STEPS)
    T = model.sampling.diffusion_steps
    assert len(rec["z"]) == K_STEPS
    for k in range(K_STEPS):
        tokens, mask = rec["tokens"][k], rec["mask"][k]
        known = mask == 0
        assert int(known[0].sum()) == sum(counts[:k]), "known tokens going into the step"
        z = model.ar_forward(tokens, known, cond_neg)
        _diff(f"run step {k}: AR z [cond; uncond] ({int(known[0].sum())} known)", z, rec["z"][k])
        z_pred = rec["z_pred"][k]                                  # [2 B count, D], rows cond then uncond
        assert z_pred.shape[0] == 2 * B * counts[k], "tokens predicted at the step"
        M = B * counts[k]
        zc, zu = z_pred[:M], z_pred[M:]
        assert len(rec["pmv"][k]) == T
        for i, (x, t, scale, out) in enumerate(rec["pmv"][k]):
            assert int(t[0]) == T - 1 - i and scale == CFG
            mean, log_var, _ = _head_step(model, x[:M], i, zc, zu, CFG)
            _diff(f"run step {k}, head step {i}: guided posterior mean", mean, out["mean"][:M])
            _diff(f"run step {k}, head step {i}: log-variance", log_var, out["log_variance"][:M])
    assert len(rec["dec_in"]) == 1
    print(f"[harmon official] run: {K_STEPS} AR steps x {T} head steps replayed; tokens per step {counts}")


def _same_8bit(name: str, ours: torch.Tensor, official_x: torch.Tensor) -> int:
    """marpipe's image (float ``uint8 / 255``) against the official script's ``uint8`` of the official
    decoder output ``official_x``: the same levels, except where ``127.5 x + 128`` lies within float32
    rounding of an integer (a VAE run with another batch size may land on the other side)."""
    from marpipe.io.files import to_uint8
    y = torch.clamp(127.5 * official_x + 128.0, 0, 255)
    official = y.to(torch.uint8)
    levels = torch.from_numpy(to_uint8(ours)).permute(0, 3, 1, 2)          # marpipe's PNG conversion
    flips = levels != official
    edge = (y - y.round()).abs() <= 1e-4 * 255
    assert int((levels.int() - official.int()).abs().max()) <= 1 and not bool((flips & ~edge).any()), \
        f"{name}: 8-bit images differ away from a level boundary"
    print(f"[harmon official] decode ({name}): 8-bit images identical at {flips.numel() - int(flips.sum())} of "
          f"{flips.numel()} values; {int(flips.sum())} boundary flips")
    return int(flips.sum())


@torch.no_grad()
def test_decode_matches_official(official_run, ref, model):
    """Official: ``HarmonModel.decode`` (``z /= vae_scale``, ``'b m n (c p q) -> b c (m p) (n q)'``,
    ``vae.decode``) and the official scripts' ``torch.clamp(127.5 * images + 128.0, 0, 255).to(uint8)``
    (github ``scripts/batch_text2image.py``, mar-grpo ``generate_image_with_logp``): marpipe's images are
    those 8-bit images, and marpipe's PNG conversion (``io.files.to_uint8``) gives them back."""
    B, (m, n) = len(PROMPTS), model.grid
    vae = model._frozen["vae"]
    run_tokens = official_run["dec_in"][0].reshape(2 * B, m * n, -1)     # the run's final tokens, CFG batch
    gen = torch.Generator().manual_seed(8)
    for name, tokens in (("official run's tokens", run_tokens),
                         ("random tokens", torch.randn(4, m * n, model.token_dim, generator=gen) * 0.5)):
        off = ref.decode(tokens.clone().view(tokens.shape[0], m, n, -1))   # decode divides in place
        ours_float = vae.decode(model.tokens_to_latents(tokens / model.vae_scale))
        _diff(f"decode, VAE output before 8 bits ({name})", ours_float, off)
        assert _same_8bit(name, model.decode(tokens), off) == 0
    # the run's own images (the cond half that HarmonModel.sample returns; decoded inside the run, maybe
    # with another thread count, hence float32-rounding differences)
    x = vae.decode(model.tokens_to_latents(run_tokens / model.vae_scale))
    _diff("decode, VAE output vs the run's returned images", x[:B], official_run["images"])
    _same_8bit("the official run's returned images", model.decode(run_tokens)[:B], official_run["images"])
    # the former (x + 1) / 2 without the official 8-bit step: half a grey level off before rounding
    half = float(((x + 1) / 2 * 255 - (127.5 * x + 128.0)).abs().max())
    print(f"[harmon official] (x+1)/2*255 vs 127.5x+128: {half:.3f} grey level (the offset the official floor absorbs)")


def test_gradient_checkpointing_gives_the_same_gradients(model):
    """Official: ``MAR.forward_mae_encoder`` / ``forward_mae_decoder`` and ``SimpleMLPAdaLN.forward`` with
    ``grad_checkpointing`` (what ``gradient_checkpointing: true`` in the paper config switches on; the
    decoder and the MLP call ``checkpoint`` without ``use_reentrant``): the GRPO loss's gradients equal
    those without checkpointing, for the AR part and the head."""
    import copy

    from marpipe.config import GRPOConfig
    from marpipe.loss import mar_grpo_loss
    from marpipe.rollout import RolloutPlan, rollout
    from marpipe.trainer import set_trainable
    m = copy.deepcopy(model)
    ro = rollout(m, PROMPTS[:1], 2, RolloutPlan.sample(2, 5, 1, 2, 1, seed=1), seed=0)
    cfg = GRPOConfig(group_size=2, prompts_per_step=1, train_ar_steps=1, train_diffusion_steps=2, beta=0.0)
    grads = []
    for ckpt in (False, True):
        m.set_gradient_checkpointing(ckpt)
        params = set_trainable(m, "all")
        m.zero_grad(set_to_none=True)
        m.train()
        mar_grpo_loss(m, ro, torch.tensor([1.0, -1.0]), cfg).loss.backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
    head = {id(p) for p in m.head_parameters()}
    nonzero = [id(p) for p, g in zip(params, grads[0]) if g.abs().max() > 0]
    assert set(nonzero) & head and set(nonzero) - head, "no gradient reached the head or the AR part"
    worst = max(float((a - b).abs().max()) for a, b in zip(*grads))
    print(f"[harmon official] gradients with vs without checkpointing: max |diff| = {worst:.2e}")
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)


# ------------------------------------------------------------------ the cost model, counted at the head
@torch.no_grad()
def test_head_rows_counted_through_hooks_equal_the_cost_model(official, tmp_path):
    """marpipe's rollout of the tiny official Harmon (the hub fixture's architecture, ``tiny_arch``) at
    128x128 (8 x 8 = 64 tokens) at the paper's step structure (64 AR steps, 25 head steps, 12 x 10
    trained, CFG 3): the rows the official ``mar.diffloss.net`` (``SimpleMLPAdaLN``) sees, counted by a
    forward hook, equal ``marpipe.models.cost.head_rows`` of the plan under each rule the rollout runs."""
    from marpipe.models.registry import load_model

    from .head_count import PAPER_SAMPLING, check_head_rows
    folder, _ = harmon_tiny.build_tiny_harmon(official, tmp_path / "tiny", tiny_arch=True)
    m = load_model(f"harmon:{folder}", device="cpu", dtype=torch.float32,
                   sampling=dict(PAPER_SAMPLING, cfg_scale=CFG, image_size=128)).eval()
    assert m.num_tokens == 64
    check_head_rows(m, m.mar.diffloss.net, "harmon official")


# ------------------------------------------------------------------ the prompt's keys and values, cached
EPS32 = float(torch.finfo(torch.float32).eps)
CACHE_REL = 64 * EPS32      # z: measured ~5 eps on these models; see the tests' docstrings
CACHE_GRAD_REL = 256 * EPS32   # loss gradients: measured ~20 eps


def _rel(ours: torch.Tensor, other: torch.Tensor) -> float:
    return float((ours - other).abs().max() / other.abs().max().clamp_min(1e-30))


def _llm_queries(model):
    """A forward hook on the LLM's first layer: ``seen[0]`` adds up the tokens it runs (queries)."""
    seen = [0]

    def hook(module, args, kwargs, out):
        h = args[0] if args else kwargs["hidden_states"]
        seen[0] += h.shape[0] * h.shape[1]
    return seen, model._frozen["llm"].model.layers[0].register_forward_hook(hook, with_kwargs=True)


@torch.no_grad()
def test_prompt_kv_cache_runs_the_prompt_once_and_gives_the_uncached_z(model):
    """``HarmonMAR`` computes the prompt's per-layer keys and values once per prompt batch and runs the
    LLM on the image tokens only at every AR step (``HarmonModel.sample``'s ``DynamicCache``): the LLM's
    tokens counted by a hook over a rollout equal ``cost.llm_tokens`` (the prompt once), and ``z`` equals
    the uncached pass (``prompt_cache = False``: the prompt with the image tokens, every step) to float32
    rounding, not bit for bit: the prompt's K/V projections and the attention run in other shapes (the
    prompt alone, then the image queries alone), which round differently. The bound is relative to
    ``max |z|``: ``64 eps`` (eps = 2^-23), an order above the ~4 eps measured on these models and two
    orders below what rows reading another prompt's keys give here (the tiny LLM's share of ``z`` is small)."""
    from marpipe.models.cost import llm_tokens
    from marpipe.rollout import RolloutPlan, mask_schedule, rollout
    B, N, C = 2 * len(PROMPTS), model.num_tokens, model.token_dim
    both, _ = _cfg_prompts(model, PROMPTS)
    g = torch.Generator().manual_seed(3)
    canvas = torch.randn(B, N, C, generator=g)
    worst = 0.0
    for n_known in ([0] * B, [5] * B, [N - 1] * B, [0, 3, 3, N - 1]):      # the last: rows grouped by count
        known = torch.zeros(B, N, dtype=torch.bool)
        for r, n in enumerate(n_known):
            known[r, torch.randperm(N, generator=g)[:n]] = True
        try:
            model.prompt_cache = False
            plain = model.ar_forward(canvas, known, both)
        finally:
            model.prompt_cache = True
        cached = model.ar_forward(canvas, known, both)
        worst = max(worst, _rel(cached, plain))
        assert _rel(cached, plain) <= CACHE_REL, f"{n_known}: {_rel(cached, plain):.2e} relative"
        swapped = Prompts(both.emb.flip(0), both.pad.flip(0))                   # another prompt's keys
        assert _rel(model.ar_forward(canvas, known, swapped), plain) > 10 * CACHE_REL
    print(f"[harmon official] AR z with the prompt's K/V cached vs uncached: max |diff| / max |z| = "
          f"{worst:.2e} ({worst / EPS32:.1f} eps)")
    counts, width = mask_schedule(model), both.emb.shape[1]
    seen, handle = _llm_queries(model)
    try:
        rollout(model, PROMPTS, 1, RolloutPlan.sample(len(counts), model.sampling.diffusion_steps, 1, 2, 1, seed=1),
                seed=0)
    finally:
        handle.remove()
    want = B * llm_tokens(counts, width, model.mar.buffer_size)
    print(f"[harmon official] LLM tokens of a rollout: {seen[0]} (cached), the prompt at every step: "
          f"{B * llm_tokens(counts, width, model.mar.buffer_size, cached=False)}")
    assert seen[0] == want


def test_prompt_kv_cache_gives_the_uncached_loss_gradients(model):
    """The GRPO loss's gradients (the MAR encoder's reach the LLM's image tokens) with the prompt's keys
    and values cached equal the uncached pass's to float32 rounding, per parameter relative to its
    gradient's largest entry: ``256 eps``, an order above the ~20 eps measured (the backward pass runs the
    LLM's attention over the cached keys too, so its rounding enters twice, and the sums over tokens
    and rows add it up; their order is the same in both paths)."""
    import copy

    from marpipe.config import GRPOConfig
    from marpipe.loss import mar_grpo_loss
    from marpipe.rollout import RolloutPlan, rollout
    from marpipe.trainer import set_trainable
    m = copy.deepcopy(model)
    ro = rollout(m, PROMPTS[:1], 2, RolloutPlan.sample(2, 5, 1, 2, 1, seed=1), seed=0)
    cfg = GRPOConfig(group_size=2, prompts_per_step=1, train_ar_steps=1, train_diffusion_steps=2, beta=0.0)
    grads = []
    for cache in (False, True):
        m.prompt_cache = cache
        params = set_trainable(m, "all")
        m.zero_grad(set_to_none=True)
        m.train()
        mar_grpo_loss(m, ro, torch.tensor([1.0, -1.0]), cfg).loss.backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
    worst = max((_rel(b, a) for a, b in zip(*grads) if a.abs().max() > 0), default=0.0)
    print(f"[harmon official] loss gradients, cached vs uncached prompt: worst max |diff| / max |grad| = "
          f"{worst:.2e} ({worst / EPS32:.1f} eps)")
    assert any(a.abs().max() > 0 for a in grads[0])
    for a, b in zip(*grads):
        assert float((b - a).abs().max()) <= CACHE_GRAD_REL * float(a.abs().max())
