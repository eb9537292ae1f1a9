"""open_clip directories (open_clip_config.json + weights) <-> rmc_jax.

Image towers:
  * timm ViT (``vision_cfg.timm_model_name`` = 'vit_*', as BiomedCLIP's ViT-B/16):
        visual.trunk.{patch_embed.proj, cls_token, pos_embed, [norm_pre]}
        visual.trunk.blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
        visual.trunk.norm -> visual.head.proj ('linear' projection)
    pre-LN, exact GELU, LayerNorm eps 1e-6 (1e-5 for timm's CLIP ViTs), patch bias, class
    token pooling. Heads follow the timm name (tiny 3, small 6, base 12, large/huge 16).
  * open_clip's own ViT (OpenAI / LAION CLIP):
        visual.{conv1, class_embedding, positional_embedding, ln_pre}
        visual.transformer.resblocks.{i}.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
                                          mlp.c_fc, mlp.c_proj}
        visual.ln_post -> visual.proj ([D, E], used as x @ proj)
Text towers:
  * a Hugging Face BERT (``text_cfg.hf_model_name``, as BiomedCLIP's PubMedBERT):
        text.transformer.* (see hf_bert) -> text.proj ('linear', or 'mlp': proj.0, GELU, proj.2)
    pooled per ``hf_pooler_type``: 'cls_last_hidden_state_pooler' -> token 0,
    'cls_pooler' -> BERT's pooler output, 'mean_pooler' -> masked mean.
  * open_clip's own causal text transformer:
        token_embedding, positional_embedding, transformer.resblocks.{i}.*, ln_final,
        text_projection ([D, E], x @ proj)
    pooled at the end-of-text token (the last real token).
``logit_scale`` is log(1/tau). Image statistics come from ``preprocess_cfg`` (OpenAI's by
default, as in open_clip).
"""

from __future__ import annotations

import math
import os
import re

from rmc_jax.models import TextConfig, VisionConfig
from rmc_jax.pretrained import hf_bert
from rmc_jax.pretrained.common import (OPENAI_MEAN, OPENAI_STD, Imported, read_json,
                                       tokenizer_source)
from rmc_jax.pretrained.mapping import Table

__all__ = ["CONFIG_FILE", "config_from_dir", "vision_table", "text_table", "open_clip_config"]

CONFIG_FILE = "open_clip_config.json"
BERT_CONFIG_DIR = "text"  # where an export puts its BERT text tower's config.json
_TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16}
_HF_POOLERS = {"cls_last_hidden_state_pooler": "cls", "cls_pooler": "pooler",
               "mean_pooler": "mean"}


def _square(size, where: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"{where}: image_size {list(size)} is not square")
        size = size[0]
    return int(size)


def _shape(tensors, name: str, where: str):
    if name not in tensors:
        raise ValueError(f"{where}: tensor {name} not found")
    return tuple(tensors[name].shape)


def _timm_vision(vcfg, tensors, where, mean, std) -> tuple[VisionConfig, int | None, bool]:
    name = vcfg["timm_model_name"]
    if not name.startswith("vit_"):
        raise ValueError(f"{where}: timm model {name!r} is not supported (only timm ViTs, "
                         "'vit_*')")
    pool = vcfg.get("timm_pool", "")
    if pool not in ("", "token"):
        raise ValueError(f"{where}: timm_pool {pool!r} is not supported ('' or 'token')")
    p = "visual.trunk."
    if f"{p}cls_token" not in tensors:
        raise ValueError(f"{where}: timm ViT without a class token is not supported")
    width = _shape(tensors, f"{p}cls_token", where)[-1]
    conv = _shape(tensors, f"{p}patch_embed.proj.weight", where)
    n_pos = _shape(tensors, f"{p}pos_embed", where)[1]
    depth = len({k[len(p) + 7:].split(".")[0] for k in tensors if k.startswith(f"{p}blocks.")})
    mlp = _shape(tensors, f"{p}blocks.0.mlp.fc1.weight", where)[0]
    size = re.match(r"vit_([a-z]+)_", name)
    heads = _TIMM_HEADS.get(size[1] if size else "", max(width // 64, 1))
    grid = math.isqrt(n_pos - 1)
    image_size = _square(vcfg.get("image_size", grid * conv[-1]), where)
    clip_like = "_clip_" in name
    vision = VisionConfig(
        image_size=image_size, channels=conv[1], patch_size=conv[-1], width=width, depth=depth,
        num_heads=heads, mlp_ratio=mlp / width, mlp_dim=mlp,
        activation="quick_gelu" if "quickgelu" in name else "gelu",
        layer_norm_eps=1e-5 if clip_like else 1e-6, patch_bias=f"{p}patch_embed.proj.bias"
        in tensors, pre_norm=f"{p}norm_pre.weight" in tensors, pixel_mean=mean, pixel_std=std)
    proj = vcfg.get("timm_proj", "linear")
    if proj == "linear":
        return vision, _shape(tensors, "visual.head.proj.weight", where)[0], bool(
            vcfg.get("timm_proj_bias", False))
    if proj in ("", None):
        return vision, _shape(tensors, f"{p}head.weight", where)[0], True
    raise ValueError(f"{where}: timm_proj {proj!r} is not supported ('linear' or '')")


def _native_vision(vcfg, quick_gelu, where, mean, std) -> VisionConfig:
    if isinstance(vcfg.get("layers", 12), (list, tuple)):
        raise ValueError(f"{where}: ResNet image towers are not supported (only ViTs)")
    for key, ok in (("ls_init_value", None), ("attentional_pool", False),
                    ("pos_embed_type", "learnable"), ("final_ln_after_pool", False)):
        if vcfg.get(key, ok) != ok:
            raise ValueError(f"{where}: vision_cfg.{key} = {vcfg[key]!r} is not supported "
                             f"(only {ok!r})")
    pool = vcfg.get("pool_type", "tok")
    if pool not in ("tok", "avg"):
        raise ValueError(f"{where}: vision_cfg.pool_type {pool!r} is not supported ('tok', "
                         "'avg')")
    width = int(vcfg.get("width", 768))
    mlp = int(width * float(vcfg.get("mlp_ratio", 4.0)))
    return VisionConfig(
        image_size=_square(vcfg.get("image_size", 224), where), channels=3,
        patch_size=int(vcfg.get("patch_size", 16)), width=width,
        depth=int(vcfg.get("layers", 12)), num_heads=width // int(vcfg.get("head_width", 64)),
        mlp_ratio=mlp / width, mlp_dim=mlp, activation="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=float(vcfg.get("norm_kwargs", {}).get("eps", 1e-5)), patch_bias=False,
        pre_norm=not vcfg.get("no_ln_pre", False), pooling="cls" if pool == "tok" else "mean",
        pixel_mean=mean, pixel_std=std)


def _native_text(tcfg, quick_gelu, where) -> TextConfig:
    for key, ok in (("ls_init_value", None), ("embed_cls", False), ("no_causal_mask", False),
                    ("final_ln_after_pool", False)):
        if tcfg.get(key, ok) != ok:
            raise ValueError(f"{where}: text_cfg.{key} = {tcfg[key]!r} is not supported "
                             f"(only {ok!r})")
    pool = tcfg.get("pool_type", "argmax")
    if pool not in ("argmax", "last", "eos"):
        raise ValueError(f"{where}: text_cfg.pool_type {pool!r} is not supported ('argmax', "
                         "'last', 'eos': the end-of-text token)")
    width = int(tcfg.get("width", 512))
    mlp = int(width * float(tcfg.get("mlp_ratio", 4.0)))
    return TextConfig(
        vocab_size=int(tcfg.get("vocab_size", 49408)), width=width,
        depth=int(tcfg.get("layers", 12)), num_heads=int(tcfg.get("heads", 8)),
        mlp_ratio=mlp / width, mlp_dim=mlp, max_len=int(tcfg.get("context_length", 77)),
        causal=True, activation="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=float(tcfg.get("norm_kwargs", {}).get("eps", 1e-5)), pooling="last")


_TIMM_WIDTHS = {"tiny": 192, "small": 384, "medium": 512, "base": 768, "large": 1024,
                "huge": 1280}


def timm_name(v: VisionConfig) -> str | None:
    """timm model name for an exported ViT: the size word carries the head count (the one
    thing the weights do not tell); None when no timm size has ``v.num_heads`` heads."""
    sizes = [s for s, heads in _TIMM_HEADS.items() if heads == v.num_heads]
    if not sizes:
        return None
    size = next((s for s in sizes if _TIMM_WIDTHS[s] == v.width), sizes[0])
    return f"vit_{size}_patch{v.patch_size}_{v.image_size}"


def _local_hf_config(directory: str, name: str) -> str | None:
    """config.json of the text tower's Hugging Face model, if a local copy exists: ``name``
    inside the open_clip directory, or ``name`` as a path."""
    for candidate in (os.path.join(directory, name), os.path.expanduser(name)):
        path = os.path.join(candidate, "config.json")
        if os.path.isfile(path):
            return path
    return None


def config_from_dir(directory: str, tensors) -> Imported:
    """Architecture of an open_clip directory; ``tensors`` (names -> arrays, possibly
    memory-mapped) settle what the config leaves to the checkpoint (timm and BERT sizes)."""
    where = os.path.join(directory, CONFIG_FILE)
    cfg = read_json(where)
    model_cfg = cfg.get("model_cfg", cfg)
    pre = cfg.get("preprocess_cfg", {})
    mean = tuple(float(x) for x in pre.get("mean", OPENAI_MEAN))
    std = tuple(float(x) for x in pre.get("std", OPENAI_STD))
    vcfg, tcfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    embed = int(model_cfg.get("embed_dim", 512))
    out = Imported(source=directory, format="open_clip", towers=(), has_temperature=True,
                   tokenizer=tokenizer_source(directory))
    if vcfg.get("timm_model_name"):
        out.vision, out.image_embed_dim, out.image_proj_bias = _timm_vision(
            vcfg, tensors, where, mean, std)
        out.layout["vision"] = "timm"
        out.layout["timm_head"] = ("visual.head.proj" if vcfg.get("timm_proj", "linear")
                                   == "linear" else "visual.trunk.head")
    else:
        out.vision = _native_vision(vcfg, quick_gelu, where, mean, std)
        out.image_embed_dim = embed
    if tcfg.get("hf_model_name"):
        p = "text.transformer."
        pooler = tcfg.get("hf_pooler_type") or "cls_pooler"
        if pooler not in _HF_POOLERS:
            raise ValueError(f"{where}: hf_pooler_type {pooler!r} is not supported "
                             f"{sorted(_HF_POOLERS)}")
        if f"{p}embeddings.token_type_embeddings.weight" not in tensors:
            raise ValueError(f"{where}: text tower {tcfg['hf_model_name']!r} is not a BERT "
                             "encoder (no token-type embeddings); only BERT-family text "
                             "towers are supported")
        bert_config = _local_hf_config(directory, tcfg["hf_model_name"])
        if bert_config is not None:
            out.text = hf_bert.text_config(read_json(bert_config), bert_config,
                                           _HF_POOLERS[pooler])
        else:
            out.text = hf_bert.infer_text_config(tensors, p, where, pooling=_HF_POOLERS[pooler])
            out.notes.append(
                f"text tower {tcfg['hf_model_name']!r}: no local config.json, so its sizes come "
                f"from the weights and BERT's defaults ({out.text.num_heads} heads of 64, GELU, "
                "LayerNorm eps 1e-12); put the model's config.json in "
                f"{os.path.join(directory, tcfg['hf_model_name'])}/ if it differs")
        proj = tcfg.get("hf_proj_type", "mlp")
        if proj == "mlp":
            out.text_proj_hidden = _shape(tensors, "text.proj.0.weight", where)[0]
            out.text_embed_dim = _shape(tensors, "text.proj.2.weight", where)[0]
            out.text_proj_bias = "text.proj.0.bias" in tensors
        elif proj == "linear":
            out.text_embed_dim = _shape(tensors, "text.proj.weight", where)[0]
            out.text_proj_bias = "text.proj.bias" in tensors
        else:
            raise ValueError(f"{where}: hf_proj_type {proj!r} is not supported ('mlp', "
                             "'linear')")
    else:
        out.text = _native_text(tcfg, quick_gelu, where)
        out.text_embed_dim = embed
        out.text_proj_bias = bool(tcfg.get("proj_bias", False))
    return out


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _resblocks(t: Table, dst: str, src: str, depth: int, width: int, mlp: int):
    for i in range(depth):
        d, s = f"{dst}/encoder/block_{i}", f"{src}transformer.resblocks.{i}."
        t.layer_norm(f"{d}/ln_attn", f"{s}ln_1", width)
        t.add(f"{d}/attn/qkv/kernel", [f"{s}attn.in_proj_weight"], "dense",
              [(3 * width, width)], (width, 3 * width))
        t.copy(f"{d}/attn/qkv/bias", f"{s}attn.in_proj_bias", (3 * width,))
        t.dense(f"{d}/attn/out", f"{s}attn.out_proj", width, width)
        t.layer_norm(f"{d}/ln_mlp", f"{s}ln_2", width)
        t.dense(f"{d}/mlp/fc1", f"{s}mlp.c_fc", mlp, width)
        t.dense(f"{d}/mlp/fc2", f"{s}mlp.c_proj", width, mlp)


def vision_table(imp: Imported) -> Table:
    v, t, e = imp.vision, Table(), "image_encoder"
    D, P, H = v.width, v.patch_size, v.mlp_dim or int(v.width * v.mlp_ratio)
    n = (v.image_size // P) ** 2 + 1
    E = imp.image_embed_dim
    if imp.layout.get("vision") == "timm":
        p = "visual.trunk."
        t.conv(f"{e}/patch_embed/kernel", f"{p}patch_embed.proj.weight", D, v.channels, P)
        if v.patch_bias:
            t.copy(f"{e}/patch_embed/bias", f"{p}patch_embed.proj.bias", (D,))
        t.copy(f"{e}/cls_token", f"{p}cls_token", (1, 1, D))
        t.copy(f"{e}/pos_embed", f"{p}pos_embed", (1, n, D))
        if v.pre_norm:
            t.layer_norm(f"{e}/pre_norm", f"{p}norm_pre", D)
        for i in range(v.depth):
            d, s = f"{e}/encoder/block_{i}", f"{p}blocks.{i}."
            t.layer_norm(f"{d}/ln_attn", f"{s}norm1", D)
            t.dense(f"{d}/attn/qkv", f"{s}attn.qkv", 3 * D, D)
            t.dense(f"{d}/attn/out", f"{s}attn.proj", D, D)
            t.layer_norm(f"{d}/ln_mlp", f"{s}norm2", D)
            t.dense(f"{d}/mlp/fc1", f"{s}mlp.fc1", H, D)
            t.dense(f"{d}/mlp/fc2", f"{s}mlp.fc2", D, H)
        t.layer_norm(f"{e}/norm", f"{p}norm", D)
        t.dense("image_proj", imp.layout.get("timm_head", "visual.head.proj"), E, D,
                bias=imp.image_proj_bias)
        return t
    p = "visual."
    t.conv(f"{e}/patch_embed/kernel", f"{p}conv1.weight", D, v.channels, P)
    t.copy(f"{e}/cls_token", f"{p}class_embedding", (D,), (1, 1, D))
    t.copy(f"{e}/pos_embed", f"{p}positional_embedding", (n, D), (1, n, D))
    if v.pre_norm:
        t.layer_norm(f"{e}/pre_norm", f"{p}ln_pre", D)
    _resblocks(t, e, p, v.depth, D, H)
    t.layer_norm(f"{e}/norm", f"{p}ln_post", D)
    t.copy("image_proj/kernel", f"{p}proj", (D, E))
    return t


def text_table(imp: Imported) -> Table:
    c, t, e = imp.text, Table(), "text_encoder"
    D, H, E = c.width, c.mlp_dim or int(c.width * c.mlp_ratio), imp.text_embed_dim
    if c.norm_position == "post":  # a Hugging Face BERT
        t.extend(hf_bert.text_table(c, prefix="text.transformer."))
        if imp.text_proj_hidden:
            t.dense("text_proj/fc1", "text.proj.0", imp.text_proj_hidden, D,
                    bias=imp.text_proj_bias)
            t.dense("text_proj/fc2", "text.proj.2", E, imp.text_proj_hidden,
                    bias=imp.text_proj_bias)
        else:
            t.dense("text_proj", "text.proj", E, D, bias=imp.text_proj_bias)
        return t
    t.copy(f"{e}/token_embed/embedding", "token_embedding.weight", (c.vocab_size, D))
    t.copy(f"{e}/pos_embed", "positional_embedding", (c.max_len, D))
    _resblocks(t, e, "", c.depth, D, H)
    t.layer_norm(f"{e}/norm", "ln_final", D)
    if imp.text_proj_bias:
        t.dense("text_proj", "text_projection", E, D)
    else:
        t.copy("text_proj/kernel", "text_projection", (D, E))
    t.skip(r"^attn_mask$", "buffer (causal attention mask)")
    return t


def tower_prefixes(imp: Imported) -> dict[str, str]:
    """Regex per tower matching all of its tensors (to skip the tower that was not asked for)."""
    text = r"^text\." if imp.text is not None and imp.text.norm_position == "post" else \
        r"^(token_embedding|positional_embedding|transformer\.|ln_final|text_projection|attn_mask)"
    return {"image": r"^visual\.", "text": text}


# ---------------------------------------------------------------------------------------------
# Export: open_clip_config.json
# ---------------------------------------------------------------------------------------------


def open_clip_config(model, timm: bool) -> dict:
    """open_clip_config.json for ``model`` (a ModelConfig) in the layout ``vision_table`` /
    ``text_table`` write."""
    v, t = model.vision, model.text
    if timm:
        vision_cfg = {"timm_model_name": timm_name(v),
                      "timm_model_pretrained": False, "timm_pool": "",
                      "timm_proj": "linear", "timm_proj_bias": model.image_proj_bias,
                      "image_size": v.image_size}
    else:
        vision_cfg = {"image_size": v.image_size, "layers": v.depth, "width": v.width,
                      "patch_size": v.patch_size, "head_width": v.width // v.num_heads,
                      "mlp_ratio": (v.mlp_dim or v.width * v.mlp_ratio) / v.width,
                      "pool_type": "tok" if v.pooling == "cls" else "avg",
                      "no_ln_pre": not v.pre_norm,
                      "norm_kwargs": {"eps": v.layer_norm_eps}}
    if t.norm_position == "post":
        pooler = {"cls": "cls_last_hidden_state_pooler", "pooler": "cls_pooler",
                  "mean": "mean_pooler"}[t.pooling]
        text_cfg = {"hf_model_name": BERT_CONFIG_DIR, "hf_tokenizer_name": BERT_CONFIG_DIR,
                    "hf_proj_type": "mlp" if model.text_proj_hidden else "linear",
                    "hf_pooler_type": pooler, "context_length": t.max_len}
    else:
        text_cfg = {"context_length": t.max_len, "vocab_size": t.vocab_size, "width": t.width,
                    "heads": t.num_heads, "layers": t.depth,
                    "mlp_ratio": (t.mlp_dim or t.width * t.mlp_ratio) / t.width,
                    "proj_bias": model.text_proj_bias, "norm_kwargs": {"eps": t.layer_norm_eps}}
    quick_gelu = (v.activation if not timm else t.activation) == "quick_gelu"
    return {"model_cfg": {"embed_dim": model.embed_dim, "quick_gelu": quick_gelu,
                          "vision_cfg": vision_cfg, "text_cfg": text_cfg},
            "preprocess_cfg": {"mean": list(v.pixel_mean or OPENAI_MEAN),
                               "std": list(v.pixel_std or OPENAI_STD)}}
