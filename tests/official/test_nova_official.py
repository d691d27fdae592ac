"""marpipe's NOVA adapter against the OFFICIAL NOVA code (diffnext, github baaivision/NOVA @2cd254a).

The official pipeline is built at tiny size with random weights (``testbed/official/nova_tiny.py``),
saved in the hub layout, and loaded twice from that folder: by ``NOVAPipeline.from_pretrained``
(the official path) and by ``marpipe.models.registry.load_model("nova:<dir>")`` (the pipeline's
path). One seeded official sampling run (``NOVAPipeline.__call__``) is recorded through hooks on
the official modules, and each of its steps is replayed through the adapter. Tolerances are float32
rounding; every compared step prints its max abs difference (``pytest -s`` shows them).

Runs where the official code imports: the venv built by
``envs/make-venv.sh .venv-nova envs/nova-requirements.txt`` (transformers 4, diffusers). Anywhere
else every test skips with one line saying why.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from marpipe import diffusion as D
from marpipe.models.protocol import Prompts
from testbed.official import nova_tiny

PROMPTS = ["a red circle on the left", "two blue squares"]
K_STEPS, T_STEPS, CFG = 4, 5, 5.0
TOL = 2e-5          # float32 rounding (values are O(1); relative to max(1, |official|))


def _diff(name: str, ours: torch.Tensor, official: torch.Tensor, tol: float = TOL) -> float:
    ours, official = ours.detach().double(), official.detach().double()
    assert ours.shape == official.shape, f"{name}: shape {tuple(ours.shape)} vs official {tuple(official.shape)}"
    err = float((ours - official).abs().max()) if ours.numel() else 0.0
    scale = max(1.0, float(official.abs().max()) if official.numel() else 0.0)
    print(f"[nova official] {name:<52s} max |diff| = {err:.2e}  (|official| <= {scale:.2f})")
    assert err <= tol * scale, f"{name}: max abs diff {err:.3e} > {tol * scale:.1e}"
    return err


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def diffnext(official):
    if not (official / "NOVA" / "diffnext").is_dir():
        pytest.skip(f"official NOVA code not found at {official / 'NOVA'}")
    try:
        import transformers
        if int(transformers.__version__.split(".")[0]) >= 5:
            pytest.skip(f"diffnext's Phi encoder needs transformers 4 (this env has {transformers.__version__}): "
                        "run in .venv-nova (envs/make-venv.sh .venv-nova envs/nova-requirements.txt)")
        nova_tiny.import_diffnext(official)
    except ImportError as exc:
        pytest.skip(f"official diffnext does not import here ({exc}): run in .venv-nova "
                    "(envs/make-venv.sh .venv-nova envs/nova-requirements.txt)")
    return official


@pytest.fixture(scope="module")
def folder(diffnext, tmp_path_factory):
    return nova_tiny.save_tiny_nova(tmp_path_factory.mktemp("nova-tiny"))


@pytest.fixture(scope="module")
def model(folder):
    m = nova_tiny.load_adapter(folder, {"ar_steps": K_STEPS, "diffusion_steps": T_STEPS, "cfg_scale": CFG})
    return m.eval()


@pytest.fixture(scope="module")
def run(folder):
    """One official sampling run, ``NOVAPipeline.__call__`` on the tiny pipeline, recorded."""
    from diffnext.models.guidance_scaler import GuidanceScaler
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor
    pipe = nova_tiny.load_official(folder)
    tr = pipe.transformer
    rec = {"x": [], "enc": [], "pred": [], "dec": [], "step": [], "guidance": []}
    hooks = [
        tr.video_encoder.register_forward_hook(lambda m, a, o: rec.__setitem__("c", o.detach().clone())),
        tr.image_encoder.patch_embed.register_forward_pre_hook(
            lambda m, a: rec["x"].append(a[0].detach().clone()) if a[0].dim() == 4 else None),
        tr.image_encoder.register_forward_hook(
            lambda m, a, o: rec["enc"].append((a[2].detach().clone(), o.detach().clone()))),
        tr.image_decoder.register_forward_hook(
            lambda m, a, o: rec["dec"].append(tuple(t.detach().clone() for t in (a[0], a[1], a[2], a[3], o)))),
        tr.register_forward_hook(lambda m, a, o: rec.__setitem__("latents", o["x"].detach().clone())),
    ]
    get_pred_mask = tr.mask_embed.get_pred_mask

    def pred_mask(num_preds):
        out = get_pred_mask(num_preds)
        rec["pred"].append((int(num_preds), out[1].detach().clone()))
        return out
    tr.mask_embed.get_pred_mask = pred_mask
    sched = pipe.scheduler
    step = sched.step

    def recorded_step(model_output, timestep, sample, generator=None, return_dict=True):
        state = generator.get_state()
        prev = step(model_output, timestep, sample, generator=generator).prev_sample
        std = torch.zeros(())
        noise = torch.zeros_like(sample)
        if timestep > 0:   # diffusers adds std * randn_tensor(generator) after the mean: take it off
            std = sched._get_variance(timestep) ** 0.5
            replay = torch.Generator().set_state(state)
            noise = randn_tensor(sample.shape, generator=replay, device=sample.device, dtype=sample.dtype)
        rec["step"].append(dict(t=int(timestep), eps=model_output.clone(), x=sample.clone(),
                                mean=prev - std * noise, std=std))
        return DDPMSchedulerOutput(prev_sample=prev) if return_dict else (prev,)
    sched.step = recorded_step
    decay = GuidanceScaler.decay_guidance_scale

    def recorded_decay(self, d=0):
        decay(self, d)
        rec["guidance"].append(self.guidance_scale)
    GuidanceScaler.decay_guidance_scale = recorded_decay
    try:
        g = torch.Generator().manual_seed(0)
        out = pipe(PROMPTS, num_inference_steps=K_STEPS, num_diffusion_steps=T_STEPS, guidance_scale=CFG,
                   generator=g, output_type="pt", disable_progress_bar=True)
    finally:
        GuidanceScaler.decay_guidance_scale = decay
        for h in hooks:
            h.remove()
    rec["images"] = out.images
    rec["pipe"] = pipe
    return rec


def _prompts(model):
    return Prompts.cat([model.encode_prompts(PROMPTS), model.encode_negative(len(PROMPTS))])


def _ar_inputs(model, run, i):
    """AR step ``i`` of the official run as marpipe sees it: canvas, known (the ``prev_ids``)."""
    B = len(PROMPTS)
    canvas = model.latents_to_tokens(run["x"][i])                            # [B, N, C]
    prev_ids = run["enc"][i][0][:B, :, 0]                                     # [B, K] (cond half)
    known = torch.zeros(B, model.num_tokens, dtype=torch.bool)
    known.scatter_(1, prev_ids, True)
    return canvas, known


# ------------------------------------------------------------------ tests
def test_conformance_suite_passes_on_the_official_modules(model):
    """``marpipe.models.conformance.check_model`` on the adapter over the official classes
    (``NOVATransformer3DModel``, ``PhiEncoderModel``, ``AutoencoderKL``, diffusers' ``DDPMScheduler``)."""
    from marpipe.models.conformance import check_model, format_results
    results = check_model(model)
    print(format_results(results))
    assert all(ok for _, ok, _ in results), format_results(results)


def test_prompt_encoding_matches_generate_video(model, run):
    """``Prompts.emb`` of prompts and the ``""`` negative == the official prefix: ``NOVAPipeline.
    encode_prompt`` -> ``TextEmbed`` -> ``Transformer3DModel.generate_video``'s ``video_encoder``
    output over the ``bos_token`` latent (batch ``[cond; uncond]``)."""
    p = _prompts(model)
    assert not p.pad.any()
    _diff("prompt encoding (video_encoder output, [cond; uncond])", p.emb, run["c"])


def test_ar_step_z_matches_generate_frame(model, run):
    """``ar_forward`` on each AR step's known tokens == the official ``image_encoder(z, c, prev_ids)``
    call inside ``Transformer3DModel.generate_frame`` (mask tokens, MAE split on ``prev_ids``)."""
    p = _prompts(model)
    assert len(run["enc"]) == K_STEPS
    for i in range(K_STEPS):
        canvas, known = _ar_inputs(model, run, i)
        with torch.no_grad():
            z = model.ar_forward(torch.cat([canvas, canvas]), torch.cat([known, known]), p)
        _diff(f"AR step {i}: z ({int(known[0].sum())} known tokens)", z, run["enc"][i][1])


def _head_calls(model, run):
    """Each official ``image_decoder`` call in ``Transformer3DModel.denoise`` with its AR step."""
    T = model.sampling.diffusion_steps
    return [(n // T, n % T, call) for n, call in enumerate(run["dec"])]


def test_head_eps_matches_denoise(model, run):
    """``head(x_t, step, z)`` on the predicted tokens == the official ``image_decoder(x, t, z,
    pred_ids)`` output inside ``Transformer3DModel.denoise`` (both CFG halves)."""
    for i, j, (x, t, z, pred_ids, out) in _head_calls(model, run):
        if j not in (0, 2, model.sampling.diffusion_steps - 1):
            continue
        step_idx = int((model.schedule.timesteps == int(t[0])).nonzero())
        assert step_idx == j
        ids = pred_ids[:, :, 0]                                                  # [2B, P]
        rows = torch.arange(ids.shape[0])[:, None]
        x_tok = model.latents_to_tokens(x)[rows, ids]                            # [2B, P, C]
        with torch.no_grad():
            eps, v = model.head(x_tok.reshape(-1, model.token_dim), torch.full((x_tok[..., 0].numel(),), j),
                                z[rows, ids].reshape(-1, z.shape[-1]))
        assert v is None
        _diff(f"AR step {i}, head step {j} (t={int(t[0])}): eps", eps.reshape(x_tok.shape), out[rows, ids])


def test_posterior_matches_scheduler_step_with_clip_sample(model, run):
    """Mean and variance of each head transition == diffusers' ``DDPMScheduler.step`` as the
    pipeline calls it in ``Transformer3DModel.denoise`` (guided eps, the config written with the
    weights: ``clip_sample=True`` clamps x0 to [-1, 1]); the mean without the clamp would differ."""
    sched = run["pipe"].scheduler
    assert sched.config.clip_sample is True and model.schedule.clip_x0 == 1.0
    B, T = len(PROMPTS), model.sampling.diffusion_steps
    worst = {"mean": 0.0, "std": 0.0, "unclipped": 0.0}
    clipped = 0
    for n, s in enumerate(run["step"]):
        i, j = n // T, n % T
        ids = run["pred"][i][1][:, :, 0]                                         # [B, P]
        rows = torch.arange(B)[:, None]
        x = model.latents_to_tokens(s["x"])[rows, ids].reshape(-1, model.token_dim)
        eps = model.latents_to_tokens(s["eps"])[rows, ids].reshape(-1, model.token_dim)
        official = model.latents_to_tokens(s["mean"])[rows, ids].reshape(-1, model.token_dim)
        step = torch.full((x.shape[0],), j)
        mean = D.posterior_mean(model.schedule, step, x, eps)
        worst["mean"] = max(worst["mean"], _diff(f"AR {i} head step {j} (t={s['t']}): posterior mean", mean, official))
        x0 = D.predict_x0(model.schedule, step, x, eps)
        clipped += int((x0.abs() > 1).sum())
        raw = D.posterior_mean(dataclasses.replace(model.schedule, clip_x0=None), step, x, eps)
        worst["unclipped"] = max(worst["unclipped"], float((raw - official).abs().max()))
        if s["t"] > 0:
            std = D.posterior_log_var(model.schedule, step[:1], x[:1]).mul(0.5).exp()[0, 0]
            worst["std"] = max(worst["std"], _diff(f"AR {i} head step {j} (t={s['t']}): posterior std",
                                                   std, torch.as_tensor(s["std"])))
    print(f"[nova official] posterior: max |mean diff| {worst['mean']:.2e}, max |std diff| {worst['std']:.2e}; "
          f"{clipped} x0 entries clipped; without the clamp the mean would be off by {worst['unclipped']:.2e}")
    assert clipped > 0 and worst["unclipped"] > 100 * TOL, "the run never exercised clip_sample"


def test_one_transition_end_to_end_matches(model, run):
    """marpipe's own head transition (``rollout._head_step``: adapter z from ``ar_forward``, head on
    both branches, CFG at 5, posterior) == the official ``denoise`` -> ``GuidanceScaler.scale`` ->
    ``DDPMScheduler.step`` mean, for every head step of AR step 1."""
    from marpipe.rollout import _head_step
    p, B, T, i = _prompts(model), len(PROMPTS), model.sampling.diffusion_steps, 1
    canvas, known = _ar_inputs(model, run, i)
    with torch.no_grad():
        z = model.ar_forward(torch.cat([canvas, canvas]), torch.cat([known, known]), p)
    ids = run["pred"][i][1][:, :, 0]
    rows = torch.arange(B)[:, None]
    for j in range(T):
        s = run["step"][i * T + j]
        x = model.latents_to_tokens(s["x"])[rows, ids]                           # [B, P, C]
        with torch.no_grad():
            mean, log_var, _ = _head_step(model, x, j, z[:B][rows, ids], z[B:][rows, ids], CFG)
        _diff(f"AR {i} head step {j}: _head_step mean vs scheduler.step", mean,
              model.latents_to_tokens(s["mean"])[rows, ids])


def test_guidance_is_constant_across_ar_steps(model, run):
    """``GuidanceScaler.decay_guidance_scale`` as ``Transformer3DModel.generate_frame`` calls it with
    the pipeline's defaults (no ``min_guidance_scale``): the scale stays 5 at every AR step, the
    constant CFG of marpipe's rollout."""
    assert run["guidance"] == [CFG] * len(model.mask_counts(K_STEPS))
    assert model.sampling.cfg_scale == CFG


def test_mask_schedule_of_the_run(model, run):
    """``mask_counts(K)`` == the ``num_preds`` the official run predicted at each AR step
    (``NOVAPipeline.__call__`` -> ``generate_frame`` -> ``MaskEmbed.get_pred_mask``)."""
    assert model.mask_counts(K_STEPS) == [n for n, _ in run["pred"]]


@pytest.mark.parametrize("image_size, steps", [(64, (1, 4, 16)), (128, (64,)), (256, (64,)), (512, (25, 64))])
def test_mask_counts_match_the_official_num_preds(diffnext, image_size, steps):
    """``NovaMAR.mask_counts(K)`` == the ``num_preds`` that ``NOVAPipeline.__call__`` computes and
    ``Transformer3DModel.generate_frame`` keeps (``> 0``), recorded at ``MaskEmbed.get_pred_mask``,
    for N = 16, 64, 256, 1024 tokens (1024 x 64: the paper's setting, one empty step dropped)."""
    from marpipe.models.nova import NovaMAR
    parts = nova_tiny.tiny_components(image_size)
    pipe = nova_tiny.official_pipeline(parts)
    model = NovaMAR(parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                    copy.deepcopy(parts["scheduler"]), sampling={"ar_steps": 4, "diffusion_steps": 1, "cfg_scale": 1.0})
    me = pipe.transformer.mask_embed
    get_pred_mask = me.get_pred_mask
    for K in steps:
        calls = []
        me.get_pred_mask = lambda n, calls=calls: (calls.append(int(n)), get_pred_mask(n))[1]
        pipe(["x"], num_inference_steps=K, num_diffusion_steps=1, guidance_scale=1, output_type="latent",
             disable_progress_bar=True)
        ours = model.mask_counts(K)
        print(f"[nova official] mask schedule N={model.num_tokens} K={K}: {len(calls)} AR passes, "
              f"identical={ours == calls}")
        assert ours == calls and sum(calls) == model.num_tokens


def test_decode_matches_decode_latents(model, run):
    """``decode(tokens)`` == ``VaeImageProcessor.decode_latents(vae, latents)`` (``vae.unscale_`` +
    ``vae.decode``) of the official run's final latents, mapped ``[-1, 1] -> [0, 1]``."""
    lat = run["latents"][:, :, 0]                                                # [B, C, H, W]
    ours = model.decode(model.latents_to_tokens(lat))
    _diff("decode (images in [0, 1])", ours, ((run["images"] + 1) / 2).clamp(0, 1))


def test_reference_copy_shares_every_frozen_module(model):
    """``copy.deepcopy(model)`` (the KL reference, ``marpipe.trainer``) shares the Phi text encoder
    (also reached through ``transformer.text_embed.encoders``), the VAE and the tokenizer, and copies
    every trained parameter."""
    ref = copy.deepcopy(model)
    frozen = [m for m in model._frozen.values()]
    ptrs = {p.data_ptr() for m in frozen for p in m.parameters()}
    ref_frozen = [m for m in ref._frozen.values()] + [e for e in ref.transformer.text_embed.encoders
                                                       if isinstance(e, torch.nn.Module)]
    assert ref_frozen and all(p.data_ptr() in ptrs for m in ref_frozen for p in m.parameters())
    assert ref.transformer.text_embed.encoders[1] is model._frozen["text_encoder"]
    assert ref.transformer.text_embed.encoders[0] is model.tokenizer and ref.tokenizer is model.tokenizer
    own = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() not in own for p in ref.parameters())
    n_frozen = sum(p.numel() for m in frozen for p in m.parameters())
    print(f"[nova official] deepcopy: {sum(p.numel() for p in ref.parameters()):,} trained params copied, "
          f"{n_frozen:,} frozen params shared")


def test_moving_the_model_after_a_prompt_rebuilds_phi_rotary_tables(folder):
    """``NovaMAR.to(dtype)`` after a first forward: diffnext derives tensors at the first call only
    (``PhiModel.maybe_init_cache`` rotary tables, ``VideoPosEmbed.get_time_embed``,
    ``PosEmbed.get_space_embed``, ``TimeCondEmbed.get_freq_embed``); left float32 against bf16
    weights they fail (``scaled_dot_product_attention``, ``linear``). The adapter drops them on
    ``.to()`` so they follow the weights."""
    m = nova_tiny.load_adapter(folder).eval()
    canvas, known = torch.zeros(1, m.num_tokens, m.token_dim), torch.zeros(1, m.num_tokens, dtype=torch.bool)

    def forward():
        p = m.encode_prompts(PROMPTS[:1])
        z = m.ar_forward(canvas, known, p)
        eps, _ = m.head(canvas[0], torch.zeros(m.num_tokens, dtype=torch.long), z[0])
        return p.emb, z, eps
    with torch.no_grad():
        before = forward()
        m.to(torch.bfloat16)
        after = forward()
    assert m._frozen["text_encoder"].model.cache.cache_dict["cos"].dtype == torch.bfloat16
    for name, a, b in zip(("prompt encoding", "z", "eps"), after, before):
        _diff(f"{name}, bf16 after float32 (bf16 rounding)", a.float(), b, tol=0.1)


def test_unsupported_scheduler_settings_fail_at_load(model, run):
    """Settings of diffusers' ``DDPMScheduler`` whose ``step`` marpipe's posterior does not reproduce
    are errors when the adapter is built; ``clip_sample=False`` gives an unclamped posterior."""
    from diffnext.schedulers.scheduling_ddpm import DDPMScheduler as DiffnextDDPM
    from diffusers import DDIMScheduler, DDPMScheduler

    from marpipe.models.nova import nova_schedule
    cfg = run["pipe"].scheduler.config
    for bad in ({"thresholding": True}, {"prediction_type": "v_prediction"}, {"variance_type": "learned_range"}):
        with pytest.raises(ValueError):
            nova_schedule(DDPMScheduler.from_config(cfg, **bad), T_STEPS)
    with pytest.raises(ValueError):
        nova_schedule(DDIMScheduler.from_config(cfg), T_STEPS)
    assert nova_schedule(DDPMScheduler.from_config(cfg, clip_sample=False), T_STEPS).clip_x0 is None
    assert nova_schedule(DDPMScheduler.from_config(cfg, clip_sample_range=2.0), T_STEPS).clip_x0 == 2.0
    # diffusers' step reads alpha-bar of the next sampling timestep whatever the spacing; diffnext's
    # own DDPMScheduler reads t - 1000 // T (wrong for 'linspace') and never clips
    assert nova_schedule(DDPMScheduler.from_config(cfg, timestep_spacing="linspace"), T_STEPS).timesteps[0] == 999
    with pytest.raises(ValueError):
        nova_schedule(DiffnextDDPM.from_config(cfg, timestep_spacing="linspace"), T_STEPS)
    assert nova_schedule(DiffnextDDPM.from_config(cfg), T_STEPS).clip_x0 is None


def test_real_nova_memory(diffnext):
    """Parameter counts of the official classes with the real configs (built on the meta device):
    ``NOVATransformer3DModel`` d48w1024-sd512, ``PhiEncoderModel`` (Phi-2), ``AutoencoderKL`` (SD
    VAE), and the bf16 memory of policy + KL reference stated in ``marpipe/models/nova.py``."""
    from diffnext.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffnext.models.text_encoders.phi import PhiEncoderModel
    from diffnext.models.transformers.transformer_nova import NOVATransformer3DModel
    from transformers import PhiConfig
    with torch.device("meta"):
        t = NOVATransformer3DModel(image_dim=4, image_size=512, image_stride=8, text_token_dim=2560,
                                   text_token_len=256, image_base_size=[32, 32], video_base_size=[1, 16, 16],
                                   arch=("vit_d16w1024", "vit_d32w1024", "mlp_d6w1024"))
        phi = PhiEncoderModel(PhiConfig(vocab_size=51200, hidden_size=2560, intermediate_size=10240,
                                        num_hidden_layers=32, num_attention_heads=32, partial_rotary_factor=0.4))
        vae = AutoencoderKL(latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    nt, nphi, nvae = count(t), count(phi), count(vae)
    assert (nt, nphi, nvae) == (645_693_456, 2_779_683_840, 83_653_863)
    policy, ref = 2 * (nt + nphi + nvae), 2 * nt
    print(f"[nova official] bf16: transformer {2 * nt / 1e9:.2f} GB, Phi {2 * nphi / 1e9:.2f} GB, VAE "
          f"{2 * nvae / 1e9:.2f} GB; policy {policy / 1e9:.2f} GB + reference {ref / 1e9:.2f} GB = "
          f"{(policy + ref) / 1e9:.2f} GB (a reference copying Phi too: {(policy + ref + 2 * nphi) / 1e9:.2f} GB)")


# ------------------------------------------------------------------ the cost model, counted at the head
@torch.no_grad()
def test_head_rows_counted_through_hooks_equal_the_cost_model(diffnext, tmp_path):
    """marpipe's rollout of the tiny official NOVA (64 tokens) at the paper's step structure (64 AR
    steps, of which the ``num_preds > 0`` ones run, 25 head steps, 12 x 10 trained): the rows the
    official ``image_decoder`` (``DiffusionMLP``) sees, counted by a forward hook, equal
    ``marpipe.models.cost.head_rows`` of the plan under each rule the rollout runs."""
    from .head_count import PAPER_SAMPLING, check_head_rows
    folder = nova_tiny.save_tiny_nova(tmp_path / "nova-64", image_size=128)
    m = nova_tiny.load_adapter(folder, dict(PAPER_SAMPLING, cfg_scale=CFG)).eval()
    assert m.num_tokens == 64
    check_head_rows(m, m.transformer.image_decoder, "nova official")


# ------------------------------------------------------------------ Phi-2: each distinct text once
def _phi_rows(model):
    """A forward hook on the official Phi encoder: ``seen[0]`` adds up the texts it encodes."""
    seen = [0]

    def hook(module, args, kwargs, out):
        ids = args[0] if args else kwargs["input_ids"]
        seen[0] += ids.shape[0]
    return seen, model._frozen["text_encoder"].register_forward_hook(hook, with_kwargs=True)


def test_each_distinct_prompt_goes_through_phi_once(model):
    """Phi-2 (and the video encoder) encode each distinct text once per call, its rows then repeated:
    a rollout of ``P`` prompts x ``G`` images runs ``P + 1`` texts through Phi (the negative once, not
    ``P G`` times), the loss ``P`` (``P + 1`` with the guided log-prob). The encodings are bit-identical
    to one row per image (CPU, float32: Phi and the video encoder compute each row alone). The loss's
    gradients reach the video encoder and ``text_embed``'s projection through the repeated rows, whose
    backward sums a prompt's ``G`` copies before the layer instead of inside its weight-gradient
    reduction: the same terms in another order, so equal to float32 rounding relative to each
    parameter's largest gradient entry (``64 eps``, measured printed)."""
    import copy

    from marpipe.config import GRPOConfig
    from marpipe.loss import mar_grpo_loss
    from marpipe.rollout import RolloutPlan, rollout
    from marpipe.trainer import set_trainable
    P, G = len(PROMPTS), 2
    texts = [p for p in PROMPTS for _ in range(G)]
    with torch.no_grad():
        assert torch.equal(model.encode_prompts(texts).emb, model._encode_rows(texts).emb)
        assert torch.equal(model.encode_negative(3).emb, model._encode_rows([model.negative_prompt] * 3).emb)
    m = copy.deepcopy(model)
    seen, handle = _phi_rows(m)
    try:
        ro = rollout(m, PROMPTS, G, RolloutPlan.sample(K_STEPS, T_STEPS, 2, 2, 1, seed=1), seed=0)
        assert seen[0] == P + 1, f"the rollout encoded {seen[0]} texts"
        cfg = GRPOConfig(group_size=G, prompts_per_step=P, train_ar_steps=2, train_diffusion_steps=2, beta=0.0,
                         guided_logp=True)
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
        grads = []
        for per_row in (True, False):
            if per_row:
                m._encode = m._encode_rows          # one row per image: the former encoding
            else:
                del m._encode
            set_trainable(m, "all")
            m.zero_grad(set_to_none=True)
            m.train()
            seen[0] = 0
            mar_grpo_loss(m, ro, adv, cfg).loss.backward()
            assert seen[0] == (2 * P * G if per_row else P + 1), f"the loss encoded {seen[0]} texts"
            grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    finally:
        handle.remove()
    eps = float(torch.finfo(torch.float32).eps)
    rel = {n: float((grads[1][n] - g).abs().max() / g.abs().max().clamp_min(1e-30)) for n, g in grads[0].items()}
    prompt_side = [n for n in rel if "video_encoder" in n or "text_embed" in n]
    assert prompt_side and all(grads[0][n].abs().max() > 0 for n in prompt_side)
    worst = max(rel.values())
    print(f"[nova official] loss gradients, prompts once vs per image: worst max |diff| / max |grad| = "
          f"{worst:.2e} ({worst / eps:.1f} eps; {sum(v == 0 for v in rel.values())}/{len(rel)} bit-identical)")
    assert worst <= 64 * eps
