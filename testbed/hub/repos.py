"""The fixture repositories: for each ``kind: hub`` entry of ``config.yaml``, the real repository's
file list, where that list comes from, and a builder that writes a tiny random-weight version of every
file (a format no installed library writes is a placeholder text naming it). See
``docs/development.md``.
"""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .gitobj import DEFAULT_GITATTRIBUTES

#: a weight file in a format no installed library writes (TensorFlow ``tf_model.h5``, Flax, Rust, ONNX,
#: Core ML): no loader of marpipe reads it; a download without a ``files:`` filter fetches it, which shows
#: in the file lists. This text, like the model card's (:func:`_common`), is part of the fixtures' bytes
#: that ``config/rehearsal.yaml`` pins.
PLACEHOLDER = "marpipe.hub placeholder: the real file is {fmt}; no library here writes that format, and no loader of marpipe reads it\n"


@dataclass(frozen=True)
class Repo:
    key: str                      # config.yaml weights.<key> / models.<key>
    repo_id: str
    files: tuple[str, ...]        # the real repository's files (sorted)
    # where ``files`` comes from: ``listing: ...`` (a listing of the real repository seen at the commit
    # named) or ``inferred: ...`` (reasoned from documentation, sibling repositories or the loading code)
    source: str
    builder: Callable[[Path], None] | None = None
    side_venv: str | None = None  # built by testbed.hub.official in .venv-<side_venv>
    notes: tuple[str, ...] = field(default_factory=tuple)
    repo_type: str = "model"      # or "dataset" (served under /api/datasets, /datasets/<repo>/resolve)


# --- small writers -----------------------------------------------------------------------------
def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _placeholder(path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLACEHOLDER.format(fmt=fmt))


def _common(d: Path, repo_id: str) -> None:
    """``.gitattributes`` (the hub's default) and a model card naming the fixture."""
    d.mkdir(parents=True, exist_ok=True)
    (d / ".gitattributes").write_text(DEFAULT_GITATTRIBUTES)
    (d / "README.md").write_text(f"---\nlicense: other\ntags:\n- marpipe-fixture\n---\n# {repo_id} (tiny fixture)\n\n"
                                 f"Random weights in the file layout of https://huggingface.co/{repo_id}, written by "
                                 f"`marpipe.hub` for rehearsals. Its numbers mean nothing.\n")


def _png(path: Path, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image
    arr = np.random.Generator(np.random.PCG64(seed)).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _zip(path: Path, members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in sorted(members.items()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, data)
    path.write_bytes(buf.getvalue())


def _bin_from_safetensors(src: Path, dst: Path) -> None:
    """``pytorch_model.bin`` (a ``torch.save`` state dict, as transformers wrote them before
    safetensors) holding the tensors of ``src``."""
    from safetensors.torch import load_file
    torch.save(dict(sorted(load_file(str(src)).items())), dst)


def _special_tokens_map(d: Path, tokens: dict) -> None:
    (d / "special_tokens_map.json").write_text(json.dumps(tokens) + "\n")


BERT_SPECIAL = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                "unk_token": "[UNK]"}
CLIP_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>"}


def _bert_tokenizer_json(d: Path) -> None:
    """``tokenizer.json`` of the BERT WordPiece tokenizer over ``d/vocab.txt``."""
    from tokenizers import BertWordPieceTokenizer
    BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True).save(str(d / "tokenizer.json"))


def _stage(builder, stage: Path) -> Path:
    """Run a ``testbed.metrics.make_<name>_dir`` builder in ``stage``; its folder."""
    stage.mkdir(parents=True, exist_ok=True)
    return builder(stage)


def _move_all(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        if p.is_file():
            q = dst / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, q)


def _open_clip_cfg(cfg: dict) -> dict:
    """``open_clip_config.json`` as the hub's open_clip repositories hold it (``model_cfg`` +
    ``preprocess_cfg``; format: timm/vit_base_patch32_clip_224.openai@ab5b8ef:open_clip_config.json)."""
    return {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                 "std": [0.26862954, 0.26130258, 0.27577711],
                                                 "interpolation": "bicubic", "resize_mode": "shortest"}}


def _open_clip_files(d: Path, cfg: dict, seed: int, *, safetensors=True, pickle=True) -> None:
    from safetensors.torch import save_file

    from testbed.metrics import _open_clip_model
    sd = {k: v.contiguous() for k, v in _open_clip_model(cfg, seed).state_dict().items()}
    _json(d / "open_clip_config.json", _open_clip_cfg(cfg))
    if safetensors:
        save_file(sd, str(d / "open_clip_model.safetensors"))
    if pickle:
        torch.save(sd, d / "open_clip_pytorch_model.bin")


def _clip_tokenizer_files(d: Path) -> None:
    from testbed.metrics import write_clip_tokenizer
    write_clip_tokenizer(d)
    _special_tokens_map(d, CLIP_SPECIAL)


def _hf_clip_model(d: Path, seed: int) -> None:
    """A tiny transformers ``CLIPModel`` (``config.json`` + ``model.safetensors`` + the same tensors
    as ``pytorch_model.bin``)."""
    from transformers import CLIPConfig, CLIPModel

    from testbed.metrics import _clip_towers
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**_clip_towers(None, max_text=77, patch=16), projection_dim=16)).save_pretrained(str(d))
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")


def _timm_vit_files(d: Path, arch: str, cfg: dict, seed: int) -> None:
    """timm's own files of a ``timm/vit_*_clip_224.openai`` repository: ``config.json`` (the format of
    timm/vit_large_patch14_clip_224.openai:config.json, tiny sizes) and ``pytorch_model.bin``, a timm
    ``VisionTransformer`` state dict (image tower only, CLIP pre-norm, projection as ``head``)."""
    from timm.models.vision_transformer import VisionTransformer
    v = cfg["vision_cfg"]
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["width"],
                            depth=v["layers"], num_heads=max(1, v["width"] // v.get("head_width", 64)),
                            num_classes=cfg["embed_dim"], pre_norm=True, global_pool="token")
    torch.save(vit.state_dict(), d / "pytorch_model.bin")
    _json(d / "config.json", {"architecture": arch, "num_classes": cfg["embed_dim"], "num_features": v["width"],
                              "global_pool": "token",
                              "pretrained_cfg": {"tag": "openai", "custom_load": False,
                                                 "input_size": [3, v["image_size"], v["image_size"]],
                                                 "fixed_input_size": True, "interpolation": "bicubic",
                                                 "crop_pct": 1.0, "crop_mode": "center",
                                                 "mean": [0.48145466, 0.4578275, 0.40821073],
                                                 "std": [0.26862954, 0.26130258, 0.27577711],
                                                 "num_classes": cfg["embed_dim"], "pool_size": None,
                                                 "first_conv": "patch_embed.proj", "classifier": "head"}})


# --- builders, one per config entry ------------------------------------------------------------
def build_hps(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "xswu/HPSv2")
    src = _stage(t.make_hps_dir, d / ".stage")
    shutil.copyfile(src / "HPS_v2.1_compressed.pt", d / "HPS_v2.1_compressed.pt")
    # HPS v2 (not 2.1): the same open_clip model with other random weights; HPS_v2.pt is the
    # uncompressed training checkpoint (state dict and the epoch), HPS_v2_compressed.pt its state dict
    sd = t._open_clip_model(t.TINY_OPEN_CLIP, 11).state_dict()
    torch.save({"epoch": 0, "name": "HPS_v2", "state_dict": sd}, d / "HPS_v2.pt")
    torch.save({"state_dict": sd}, d / "HPS_v2_compressed.pt")


def build_imagereward(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "THUDM/ImageReward")
    _move_all(_stage(t.make_imagereward_dir, d / ".stage"), d)
    _png(d / "ImageReward.png", 1)
    _zip(d / "test_images.zip", {"test_images/1.webp": b"tiny fixture image\n"})


def build_bert_base_uncased(d: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    from testbed import metrics as t
    _common(d, "google-bert/bert-base-uncased")
    t.make_bert_base_uncased_dir(d / ".stage")
    _move_all(d / ".stage" / "bert_base_uncased", d)          # vocab.txt, tokenizer_config.json
    _bert_tokenizer_json(d)
    torch.manual_seed(12)
    BertForMaskedLM(BertConfig(vocab_size=len(t.BERT_WORDS), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
                    ).save_pretrained(str(d / ".stage" / "model"))
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(d / ".stage" / "model" / f, d / f)
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")
    (d / "LICENSE").write_text("Apache License 2.0 (the license of google-bert/bert-base-uncased)\n")
    for f, fmt in (("tf_model.h5", "TensorFlow HDF5"), ("flax_model.msgpack", "Flax msgpack"),
                   ("rust_model.ot", "rust-bert .ot"), ("model.onnx", "ONNX"),
                   (f"{COREML}/Data/com.apple.CoreML/model.mlmodel", "Core ML model"),
                   (f"{COREML}/Data/com.apple.CoreML/weights/weight.bin", "Core ML weights"),
                   (f"{COREML}/Manifest.json", "Core ML package manifest")):
        _placeholder(d / f, fmt)


COREML = "coreml/fill-mask/float32_model.mlpackage"


def build_pickscore(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "yuvalkirstain/PickScore_v1")
    _move_all(_stage(t.make_pickscore_dir, d / ".stage"), d)            # config.json, model.safetensors
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")
    _move_all(_stage(t.make_clip_h14_processor_dir, d / ".stage2"), d)  # the processor it was uploaded with
    _special_tokens_map(d, CLIP_SPECIAL)


def build_clip_h14_processor(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    _move_all(_stage(t.make_clip_h14_processor_dir, d / ".stage"), d)
    _special_tokens_map(d, CLIP_SPECIAL)
    _hf_clip_model(d, 13)
    _open_clip_files(d, t.TINY_OPEN_CLIP, 14)


def build_clip_l14(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "timm/vit_large_patch14_clip_224.openai")
    _clip_tokenizer_files(d)
    _open_clip_files(d, t.TINY_AESTHETIC_CLIP, 2)     # seed 2: the weights of make_clip_l14_dir
    _timm_vit_files(d, "vit_large_patch14_clip_224", t.TINY_AESTHETIC_CLIP, 15)


def build_clip_b32(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "timm/vit_base_patch32_clip_224.openai")
    _clip_tokenizer_files(d)
    _open_clip_files(d, t.TINY_AESTHETIC_CLIP, 16)
    _timm_vit_files(d, "vit_base_patch32_clip_224", t.TINY_AESTHETIC_CLIP, 17)


def build_blip_vqa(d: Path) -> None:
    from transformers import BlipImageProcessor

    from testbed import metrics as t
    _common(d, "Salesforce/blip-vqa-capfilt-large")
    src = _stage(t.make_blip_vqa_dir, d / ".stage")
    _move_all(src, d)
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")   # main has no safetensors
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(d))
    _special_tokens_map(d, BERT_SPECIAL)
    _placeholder(d / "tf_model.h5", "TensorFlow HDF5")


def build_git_vqa(d: Path) -> None:
    from testbed import metrics as t
    _common(d, "microsoft/git-large-vqav2")
    _move_all(_stage(t.make_git_dir, d / ".stage"), d)
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")
    _special_tokens_map(d, BERT_SPECIAL)


def _gdino_transformers4_layout(d: Path) -> None:
    """Rewrite ``model.safetensors`` in the key layout transformers 4 writes, the layout of the real file
    (IDEA-Research/grounding-dino-tiny was converted with transformers 4 in 2024): the Swin backbone's
    ``relative_position_index`` buffers are in the file (persistent in transformers 4) and there is no
    ``swin.layernorm`` (transformers 4's ``SwinBackbone`` has none). transformers 5 reads this layout (its
    checkpoint conversions); transformers 4.57 (``.venv-nova``, where NOVA's mixed reward runs) reads only
    this one -- the rehearsal found it: a file written by transformers 5 failed there, strictly loaded."""
    from safetensors.torch import load_file, save_file
    from transformers import GroundingDinoForObjectDetection
    model = GroundingDinoForObjectDetection.from_pretrained(str(d), local_files_only=True, dtype=torch.float32)
    sd = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if ".swin.layernorm." not in k}
    # transformers 5 names the buffer <...>.model.swin.encoder.<...>.attention.relative_position_bias.<...> in
    # the module and converts the learned keys back to transformers 4's names when it saves
    pat = re.compile(r"^(.*)\.swin\.encoder\.(.*)\.attention\.relative_position_bias\.relative_position_index$")
    for name, buf in model.named_buffers():
        m = pat.match(name)
        if m:
            n = math.isqrt(buf.numel())       # transformers 4 keeps the (window^2, window^2) matrix
            sd[f"{m[1]}.encoder.{m[2]}.attention.self.relative_position_index"] = \
                buf.detach().reshape(n, n).clone().contiguous()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def build_gdino(d: Path) -> None:
    from transformers import GroundingDinoImageProcessor

    from testbed import metrics as t
    _common(d, "IDEA-Research/grounding-dino-tiny")
    _move_all(_stage(t.make_gdino_dir, d / ".stage"), d)
    # transformers 5 writes the processor as processor_config.json; the repo holds the image
    # processor's own preprocessor_config.json (same sizes as make_gdino_dir)
    GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 128}).save_pretrained(str(d))
    _gdino_transformers4_layout(d)
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")
    _special_tokens_map(d, BERT_SPECIAL)
    w = t.BERT_WORDS.index     # added_tokens.json (82 bytes in the real repo): BERT's specials, inferred
    (d / "added_tokens.json").write_text(json.dumps({k: w(k) for k in ("[CLS]", "[MASK]", "[PAD]", "[SEP]",
                                                                       "[UNK]")}) + "\n")


def build_depth(d: Path) -> None:
    from transformers import DPTImageProcessor

    from testbed import metrics as t
    _common(d, "Intel/dpt-hybrid-midas")
    _move_all(_stage(t.make_dpt_dir, d / ".stage"), d)
    _bin_from_safetensors(d / "model.safetensors", d / "pytorch_model.bin")
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=32
                      ).save_pretrained(str(d))


HPS_STYLE_FILES = ("anime", "concept-art", "paintings", "photo")


def hps_benchmark_prompts(style: str) -> bytes:
    """A fixture ``benchmark/<style>.json``: a JSON list of prompt strings, as the real files are."""
    return json.dumps([f"a {style} picture of a {o}" for o in ("cat", "dog", "apple", "car")]).encode()


def build_hpdv2(d: Path) -> None:
    _common(d, "zhwang/HPDv2")
    for style in HPS_STYLE_FILES:
        (d / "benchmark").mkdir(parents=True, exist_ok=True)
        (d / "benchmark" / f"{style}.json").write_bytes(hps_benchmark_prompts(style))


# --- the table ----------------------------------------------------------------------------------
_HF = "huggingface.co/{}/tree/{}"
_OPEN_CLIP_TIMM = (".gitattributes", "README.md", "config.json", "merges.txt", "open_clip_config.json",
                   "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin",
                   "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")

REPOS: dict[str, Repo] = {r.key: r for r in [
    Repo("nova", "BAAI/nova-d48w1024-sd512",
         (".gitattributes", ".gitignore", "LICENSE", "README.md", "model_index.json", "scheduler/scheduler_config.json",
          "text_encoder/__text_encoder__.py", "text_encoder/config.json", "text_encoder/model-00001-of-00002.safetensors",
          "text_encoder/model-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json",
          "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "transformer/__transformer__.py",
          "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/__vae__.py",
          "vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
         "listing: root, vae/, tokenizer/, scheduler/ of BAAI/nova-d48w1024-sd512 (main 948bafe; initial commit "
         "659b73e98d5333c5ae8206c0257d7e5188f3dde2); inferred: text_encoder/ from BAAI/nova-d48w1024-osp480@b6f77bf "
         "(the same Phi-2 encoder, sharded in 2), transformer/ from osp480's __transformer__.py and diffusers' "
         "layout; model_index.json: sdxl1024's with DDPMScheduler/AutoencoderKL (362 bytes, as sd512's)",
         side_venv="nova",
         notes=("transformer/__transformer__.py also registers the tiny architectures (the real file only imports "
                "NOVATransformer3DModel): a tiny transformer cannot use the real d48w1024 arch names",)),
    Repo("harmon", "wusize/Harmon-1_5B",
         (".gitattributes", "README.md", "config.json", "configuration_harmon.py", "diffloss.py", "diffusion_utils.py",
          "gaussian_diffusion.py", "mar.py", "merges.txt", "misc.py", "model.safetensors", "modeling_harmon.py",
          "respace.py", "tokenizer.json", "tokenizer_config.json", "vae.py", "vocab.json"),
         "inferred: no listing of wusize/Harmon-1_5B was reachable; the trust_remote_code files as kept in "
         "AMAP-ML/mar-grpo@fcb79697834ea919d4d89185563fb2523694185b:src/grpo/src/harmon, config.json + "
         "model.safetensors as save_pretrained writes them, the Qwen2.5 tokenizer files (testbed/official/harmon_tiny.py)",
         side_venv="harmon",
         notes=("the model card mentions method.png; not served (its presence is not verified)",
                "mar.py and vae.py end in a fixture block (not in the real files): mar_base takes the tiny MAR "
                "widths/depths that config.json's `mar` keys name, the VAE's Encoder/Decoder default to width 32 "
                "with one res block per level (the real code fixes mar_base at 171M and the VAE at 66M parameters)")),
    Repo("hps", "xswu/HPSv2",
         (".gitattributes", "HPS_v2.1_compressed.pt", "HPS_v2.pt", "HPS_v2_compressed.pt", "README.md"),
         "listing: huggingface.co/xswu/HPSv2/tree/main at 697403c (the pinned commit)", build_hps,
         notes=("the real repo holds no open_clip_config.json: the tiny ViT cannot be described to a loader that "
                "falls back on the built-in ViT-H-14",)),
    Repo("imagereward", "THUDM/ImageReward",
         (".gitattributes", "ImageReward.png", "ImageReward.pt", "README.md", "med_config.json", "test_images.zip"),
         "listing: THUDM/ImageReward at 9fabc27 (12 commits; the pinned 5736be0 was not listed)", build_imagereward),
    Repo("bert_base_uncased", "google-bert/bert-base-uncased",
         (".gitattributes", "LICENSE", "README.md", "config.json", f"{COREML}/Data/com.apple.CoreML/model.mlmodel",
          f"{COREML}/Data/com.apple.CoreML/weights/weight.bin", f"{COREML}/Manifest.json", "flax_model.msgpack", "model.onnx", "model.safetensors", "pytorch_model.bin", "rust_model.ot",
          "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.txt"),
         "listing: google-bert/bert-base-uncased at 87565a3 / f584a14 (the pinned 86b5e09 was not listed); the "
         "files inside coreml/ are inferred (the listing shows the folder only)", build_bert_base_uncased),
    Repo("pickscore", "yuvalkirstain/PickScore_v1",
         (".gitattributes", "README.md", "config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
          "pytorch_model.bin", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"),
         "listing: huggingface.co/yuvalkirstain/PickScore_v1/tree/a4e4367 (the pinned commit)", build_pickscore),
    Repo("clip_h14_processor", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
         (".gitattributes", "README.md", "config.json", "merges.txt", "model.safetensors", "open_clip_config.json",
          "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "preprocessor_config.json", "pytorch_model.bin",
          "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"),
         "inferred: the files of its Nov 2022 duplicate hoaiht/CLIP-ViT-H-14-laion2B-s32B-b79K, plus the "
         "safetensors variants and open_clip_config.json the laion repos got later (laion/CLIP-ViT-g-14-laion2B-s12B-b42K)",
         build_clip_h14_processor),
    Repo("clip_l14", "timm/vit_large_patch14_clip_224.openai", _OPEN_CLIP_TIMM,
         "inferred: the listing of timm/vit_base_patch32_clip_224.openai@ab5b8ef (same uploader, same 'Add model' "
         "of the open_clip files); listings of this repo before that show .gitattributes, README.md, config.json, "
         "pytorch_model.bin", build_clip_l14),
    Repo("clip_b32", "timm/vit_base_patch32_clip_224.openai", _OPEN_CLIP_TIMM,
         "listing: huggingface.co/timm/vit_base_patch32_clip_224.openai/tree/ab5b8ef", build_clip_b32),
    Repo("blip_vqa", "Salesforce/blip-vqa-capfilt-large",
         (".gitattributes", "README.md", "config.json", "preprocessor_config.json", "pytorch_model.bin",
          "special_tokens_map.json", "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.txt"),
         "listing: Salesforce/blip-vqa-capfilt-large main (270352c, 13 commits; model.safetensors is only in "
         "refs/pr/7)", build_blip_vqa),
    Repo("git_vqa", "microsoft/git-large-vqav2",
         (".gitattributes", "README.md", "config.json", "generation_config.json", "model.safetensors",
          "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json", "tokenizer.json",
          "tokenizer_config.json", "vocab.txt"),
         "listing: microsoft/git-large-vqav2 main (075dd1e, 7 commits)", build_git_vqa),
    Repo("gdino", "IDEA-Research/grounding-dino-tiny",
         (".gitattributes", "README.md", "added_tokens.json", "config.json", "model.safetensors",
          "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json", "tokenizer.json",
          "tokenizer_config.json", "vocab.txt"),
         "listing: huggingface.co/IDEA-Research/grounding-dino-tiny/tree/a2bb814 (19 commits); added_tokens.json's "
         "content inferred", build_gdino),
    Repo("depth", "Intel/dpt-hybrid-midas",
         (".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json",
          "pytorch_model.bin"),
         "inferred: no listing of Intel/dpt-hybrid-midas was reachable; the files transformers' DPT repositories "
         "hold (config, both weight formats, the image processor)", build_depth),
    Repo("preference", "zhwang/HPDv2",
         (".gitattributes", "README.md", *(f"benchmark/{s}.json" for s in HPS_STYLE_FILES)),
         "inferred: the benchmark files hpsv2.benchmark_prompts downloads (benchmark/<style>.json of the dataset "
         "at main, tgxs002/HPSv2@1d34ebfd77ede7e2cab417f20a8dbb388d6fada7:hpsv2/utils.py download_benchmark_prompts); "
         "the dataset's "
         "training images and annotations are left out", build_hpdv2, repo_type="dataset"),
]}
