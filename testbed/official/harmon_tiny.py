"""The OFFICIAL Harmon (``HarmonModel``, the ``trust_remote_code`` files of the HF repo ``wusize/Harmon-1_5B``
as kept in ``harmon-remote-code/`` beside the repository) at tiny size with random weights, in a folder
laid out as a download of ``wusize/Harmon-1_5B`` (:func:`build_tiny_harmon`), so that marpipe loads it
exactly as the pipeline does (``load_model("harmon:<dir>")``). Nothing here is official code: the
remote-code files are copied at test time, unchanged but for one line (:func:`copy_remote_code`). See
``docs/development.md``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

REMOTE_CODE = "harmon-remote-code"
BAD_LINE = 238   # 1-based, modeling_harmon.py
BAD_TEXT = "self.curtail_cache(past_key_values, inputs_embeds.shape[1])"

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")   # Qwen2.5: ids 151643, 151644, 151645
# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer / Qwen2.5 tokenizer.json)
QWEN_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# tiny Qwen2 (Harmon-1.5B: Qwen2.5-1.5B-Instruct, hidden 1536, 28 layers, 12/2 heads, tied embeddings)
TINY_LLM = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=300, hidden_size=32,
                intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu",
                tie_word_embeddings=True, use_sliding_window=False, sliding_window=512, max_window_layers=2,
                attention_dropout=0.0, initializer_range=0.02, bos_token_id=256, eos_token_id=258,
                torch_dtype="float32")
# Harmon/configs/models/qwen2_5_1_5b_kl16_mar_h.py at tiny size (there: mar_huge, img_size 256,
# buffer_size 64, diffloss_d 12, diffloss_w 1536, num_sampling_steps "100", grad_checkpointing True)
TINY_MAR = dict(type="mar_base", img_size=32, vae_stride=16, patch_size=1, vae_embed_dim=16, mask_ratio_min=0.7,
                label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1, buffer_size=4,
                diffloss_d=2, diffloss_w=32, num_sampling_steps="5", diffusion_batch_mul=4,
                grad_checkpointing=True)
# marpipe's sampling for the tiny folder: 64x64 images = 4x4 tokens (learned at 2x2, like 16x16 -> 32x32)
TINY_SAMPLING = {"ar_steps": 4, "diffusion_steps": 5, "cfg_scale": 3.0, "image_size": 64}

# --- the hub fixture's tiny architecture (testbed.hub, ``tiny_arch=True``) -------------------------------
# ``mar_base`` is the smallest MAR the remote code builds (2 x 12 blocks of width 768: 171M parameters) and
# ``HarmonModel`` builds its KL-16 VAE at a fixed width (66M): a rehearsal's 16 training checkpoints were 2 GB
# each. As the NOVA fixture registers tiny architectures in diffnext's registries, the hub fixture appends a
# block to two remote-code files (declared in them and in testbed/hub/repos.py; nothing else changes):
# ``mar.py``'s ``mar_base`` takes the MAR widths/depths from config.json's ``mar`` keys (defaults: the real
# mar_base's), and ``vae.py``'s ``Encoder``/``Decoder`` default to a narrow width. The classes built are the
# official ``MAR``, ``DiffLoss``, ``Encoder``/``Decoder``/``AutoencoderKL`` and ``HarmonModel``.
MAR_BASE_ARCH = dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                     decoder_embed_dim=768, decoder_depth=12, decoder_num_heads=12)
TINY_MAR_ARCH = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                     decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
REAL_VAE = dict(ch=128, num_res_blocks=2)    # vae.py's Encoder/Decoder defaults, which AutoencoderKL keeps
TINY_VAE = dict(ch=32, num_res_blocks=1)     # GroupNorm(32) everywhere: ch >= 32
# (the marker's text is part of the fixture's bytes, which config/rehearsal.yaml pins)
FIXTURE_MARK = "# --- marpipe.hub fixture only: NOT in the real file "
MAR_PATCH = FIXTURE_MARK + """-------------------------------------------------
# The real mar_base fixes 2 x 12 blocks of width 768 (171M parameters). The tiny fixture's config.json
# names tiny widths/depths in its `mar` keys; this mar_base passes them to the official MAR (without
# them it builds the real mar_base).
def mar_base(encoder_embed_dim={encoder_embed_dim}, encoder_depth={encoder_depth}, encoder_num_heads={encoder_num_heads},
             decoder_embed_dim={decoder_embed_dim}, decoder_depth={decoder_depth}, decoder_num_heads={decoder_num_heads},
             **kwargs):
    return MAR(encoder_embed_dim=encoder_embed_dim, encoder_depth=encoder_depth, encoder_num_heads=encoder_num_heads,
               decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads,
               mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
"""
VAE_PATCH = FIXTURE_MARK + """-------------------------------------------------
# HarmonModel builds AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)), whose Encoder/Decoder the real
# file builds at ch=128 with 2 res blocks per level (66M parameters). The tiny fixture's are the same
# classes at ch={ch} with {num_res_blocks} res block(s) per level: same strides, same 16-channel latent.
class Encoder(Encoder):
    def __init__(self, *, ch={ch}, num_res_blocks={num_res_blocks}, **kwargs):
        super().__init__(ch=ch, num_res_blocks=num_res_blocks, **kwargs)


class Decoder(Decoder):
    def __init__(self, *, ch={ch}, num_res_blocks={num_res_blocks}, **kwargs):
        super().__init__(ch=ch, num_res_blocks=num_res_blocks, **kwargs)
"""


def tiny_arch_remote_code(folder: Path) -> None:
    """Append the fixture blocks to ``folder``'s copied ``mar.py`` and ``vae.py`` (see :data:`MAR_PATCH`)."""
    for name, block in (("mar.py", MAR_PATCH.format(**MAR_BASE_ARCH)), ("vae.py", VAE_PATCH.format(**TINY_VAE))):
        path = Path(folder) / name
        path.chmod(path.stat().st_mode | 0o200)        # copied from a read-only checkout
        text = path.read_text()
        if FIXTURE_MARK in text:
            raise RuntimeError(f"{path} already holds the fixture block")
        path.write_text(text.rstrip("\n") + "\n\n\n" + block)


def copy_remote_code(src: Path, dst: Path) -> list[str]:
    """Copy the remote-code ``*.py`` files; re-indent ``modeling_harmon.py`` line 238 only: that line
    (``self.curtail_cache(...)`` inside ``HarmonModel.sample``) is indented four spaces too deep in the
    copy (IndentationError); the four spaces removed give the indentation of the same line in github
    wusize/Harmon ``src/models/harmon.py``."""
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for f in sorted(src.glob("*.py")):
        shutil.copy(f, dst / f.name)
        names.append(f.name)
    path = dst / "modeling_harmon.py"
    lines = path.read_text().split("\n")
    line = lines[BAD_LINE - 1]
    try:
        compile("\n".join(lines), str(path), "exec")
    except IndentationError:
        if line.strip() != BAD_TEXT or not line.startswith(" " * 16) or line.startswith(" " * 17):
            raise RuntimeError(f"{src}/modeling_harmon.py line {BAD_LINE} is not the known mis-indented "
                               f"{BAD_TEXT!r}: the remote code changed, check it by hand") from None
        lines[BAD_LINE - 1] = line[4:]
        path.write_text("\n".join(lines))
        compile(path.read_text(), str(path), "exec")
    return names


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / Qwen byte-level alphabet: every byte -> a printable unicode symbol."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def write_tokenizer(folder: Path) -> None:
    """A Qwen2-style byte-level BPE tokenizer (no merges) with Qwen's special tokens, in the files of
    a Qwen2.5 repository."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    specials = {t: len(vocab) + i for i, t in enumerate(SPECIAL_TOKENS)}
    tok = Tokenizer(BPE(vocab=dict(vocab), merges=[], dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.token_to_id("<|im_end|>") == specials["<|im_end|>"]
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in specials.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 512, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, indent=1))


def harmon_config(llm: dict | None = None, mar: dict | None = None) -> dict:
    return {"architectures": ["HarmonModel"],
            "auto_map": {"AutoConfig": "configuration_harmon.HarmonConfig",
                         "AutoModel": "modeling_harmon.HarmonModel"},
            "model_type": "harmon", "llm": dict(llm or TINY_LLM), "mar": dict(mar or TINY_MAR),
            "torch_dtype": "float32"}


@torch.no_grad()
def perturb_zero_init(model, seed: int = 1, adaln_std: float = 0.1, out_std: float = 0.3) -> list[str]:
    """The official diffusion MLP zero-initialises its adaLN modulations and its output layer (a fresh
    head outputs exactly 0); give those tensors random values so that the head's eps and v are
    non-zero and depend on ``z``. Returns the names of the tensors changed."""
    gen = torch.Generator().manual_seed(seed)
    net, changed = model.mar.diffloss.net, []
    for name, p in net.named_parameters():
        if p.numel() and not p.any():
            std = out_std if name.startswith("final_layer.linear") else adaln_std
            p.copy_(torch.randn(p.shape, generator=gen) * std)
            changed.append(f"mar.diffloss.net.{name}")
    return changed


def build_tiny_harmon(official_root: str | Path, folder: str | Path, seed: int = 0,
                      llm: dict | None = None, mar: dict | None = None, tiny_arch: bool = False):
    """Write the tiny official Harmon folder; return ``(folder, model)``, ``model`` being the official
    ``HarmonModel`` whose weights the folder holds (eval mode, float32): the reference of the tests.

    ``tiny_arch``: the hub fixture's folder (:func:`tiny_arch_remote_code`: a tiny MAR and VAE, ~3M
    parameters instead of ~238M); default: the remote code as shipped, ``mar_base``.

    The folder holds:

    * ``config.json`` written by ``save_pretrained``: ``HarmonConfig`` (``model_type`` ``harmon``,
      ``auto_map`` -> ``configuration_harmon.HarmonConfig`` / ``modeling_harmon.HarmonModel``) with
      ``llm`` (a ``Qwen2Config`` dict, as ``Qwen2Config.from_dict(config.llm)`` reads it) and ``mar``
      (``type`` + ``mar_base/large/huge`` keyword arguments, as ``HarmonModel.__init__`` pops them);
    * ``model.safetensors`` written by ``save_pretrained``: Qwen2's tied ``llm.lm_head.weight`` is NOT in
      it (only ``llm.model.embed_tokens.weight``);
    * the remote-code ``*.py`` files (``save_pretrained`` copies them next to the config);
    * a Qwen2-style tokenizer (``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``
      with ``tokenizer_class`` ``Qwen2Tokenizer``, ``eos_token`` ``<|im_end|>``, ``pad_token``
      ``<|endoftext|>``), built offline: byte-level BPE over the 256 byte symbols, no merges, plus the
      special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``;
    * marpipe's ``MANIFEST.sha256``.

    Layout facts and assumptions: the remote code fixes the VAE (KL-16, ``embed_dim`` 16,
    ``ch_mult (1, 1, 2, 2, 4)``) and offers only ``mar_base``/``mar_large``/``mar_huge`` (real Harmon-1.5B:
    ``mar_huge``, Qwen2.5-1.5B-Instruct), so "tiny" is a tiny Qwen2, ``mar_base`` (the smallest, 2 x 12
    blocks of width 768), a small diffusion MLP and a small buffer; the ``mar`` keys mirror
    ``Harmon/configs/models/qwen2_5_1_5b_kl16_mar_h.py`` (``img_size`` 256 -> 32 here, so the learned
    position embeddings are bilinearly resized for generation as Harmon's 256 -> 512 are). ASSUMED, not
    checkable from here (no hub access): that the HF repo's ``config.json`` carries these same ``mar`` keys
    (the generation diffusion steps ``num_sampling_steps`` there may be "100", the github config's value),
    that it ships the Qwen2.5 tokenizer files, and that its weights are ``model.safetensors`` (sharded
    ``model-0000x-of-0000y.safetensors`` load the same way in marpipe).
    """
    from transformers import AutoConfig, AutoModel

    from marpipe.models.download import write_manifest
    folder = Path(folder)
    copy_remote_code(Path(official_root) / REMOTE_CODE, folder)
    if tiny_arch:
        tiny_arch_remote_code(folder)
        mar = {**TINY_MAR, **TINY_MAR_ARCH, **(mar or {})}
    (folder / "config.json").write_text(json.dumps(harmon_config(llm, mar), indent=1))
    torch.manual_seed(seed)
    np.random.seed(seed)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModel.from_config(config, trust_remote_code=True)
    perturb_zero_init(model, seed=seed + 1)
    model = model.float().eval()
    model.save_pretrained(str(folder))
    write_tokenizer(folder)
    write_manifest(folder)
    return folder, model
