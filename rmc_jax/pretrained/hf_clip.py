"""Hugging Face ``CLIPModel`` directories (config.json + model.safetensors) <-> rmc_jax.

    vision_model.embeddings.{patch_embedding (no bias), class_embedding, position_embedding}
    vision_model.pre_layrnorm -> encoder.layers.{i} -> post_layernorm -> visual_projection
    text_model.embeddings.{token_embedding, position_embedding}
    text_model.encoder.layers.{i} -> final_layer_norm -> (end token) -> text_projection
    logit_scale (= log(1/tau))

A layer: layer_norm1 -> self_attn.{q,k,v,out}_proj -> layer_norm2 -> mlp.{fc1,fc2} (pre-LN).
The vision tower maps to a ViT with ``pre_norm``, no patch bias and the config's activation
(quick_gelu for OpenAI's models); the text tower to a causal encoder pooled at the last real
token, which is the end-of-text token whenever the text is encoded by the model's own
tokenizer (what Hugging Face's ``pooler_output`` picks, too).

``post_layernorm`` is applied to every token (open_clip's ``ln_post`` behaviour); Hugging Face
applies it to the class token only, so the pooled embedding is identical and the patch grid is
the normalised patch tokens, which is what the region head wants.
"""

from __future__ import annotations

import os

from rmc_jax.models import TextConfig, VisionConfig
from rmc_jax.pretrained.common import (HF_ACTIVATIONS, OPENAI_MEAN, OPENAI_STD, Imported,
                                       activation, read_json, tokenizer_source)
from rmc_jax.pretrained.mapping import Table

__all__ = ["config_from_dir", "vision_table", "text_table", "hf_config", "preprocessor_config"]

# CLIPVisionConfig / CLIPTextConfig defaults (a saved config may leave them out).
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                        hidden_act="quick_gelu", layer_norm_eps=1e-5)
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _size(value, default: int) -> int:
    """An image processor size entry (int, {'height', 'width'} or {'shortest_edge'}) -> int."""
    if isinstance(value, dict):
        return int(value.get("height", value.get("shortest_edge", default)))
    return int(value) if value else default


def config_from_dir(directory: str) -> Imported:
    """Architecture, projections and preprocessing of a ``CLIPModel`` directory (no weights)."""
    cfg = read_json(os.path.join(directory, "config.json"))
    where = os.path.join(directory, "config.json")
    if cfg.get("model_type") != "clip":
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r} is not a Hugging Face "
                         "CLIPModel ('clip')")
    v = {**_VISION_DEFAULTS, **cfg.get("vision_config", {})}
    t = {**_TEXT_DEFAULTS, **cfg.get("text_config", {})}
    mean, std = OPENAI_MEAN, OPENAI_STD
    pre_path = os.path.join(directory, "preprocessor_config.json")
    if os.path.isfile(pre_path):
        pre = read_json(pre_path)
        pre = pre.get("image_processor", pre)
        mean = tuple(float(x) for x in pre.get("image_mean", mean))
        std = tuple(float(x) for x in pre.get("image_std", std))
    channels = int(v["num_channels"])
    if len(mean) != channels:
        mean, std = (mean[0],) * channels, (std[0],) * channels
    vision = VisionConfig(
        image_size=int(v["image_size"]), channels=channels, patch_size=int(v["patch_size"]),
        width=int(v["hidden_size"]), depth=int(v["num_hidden_layers"]),
        num_heads=int(v["num_attention_heads"]),
        mlp_ratio=v["intermediate_size"] / v["hidden_size"], mlp_dim=int(v["intermediate_size"]),
        activation=activation(v["hidden_act"], f"{where} vision_config.hidden_act"),
        layer_norm_eps=float(v["layer_norm_eps"]), patch_bias=False, pre_norm=True,
        pixel_mean=mean, pixel_std=std,
    )
    text = TextConfig(
        vocab_size=int(t["vocab_size"]), width=int(t["hidden_size"]),
        depth=int(t["num_hidden_layers"]), num_heads=int(t["num_attention_heads"]),
        mlp_ratio=t["intermediate_size"] / t["hidden_size"], mlp_dim=int(t["intermediate_size"]),
        max_len=int(t["max_position_embeddings"]), causal=True,
        activation=activation(t["hidden_act"], f"{where} text_config.hidden_act"),
        layer_norm_eps=float(t["layer_norm_eps"]), pooling="last",
    )
    embed = int(cfg.get("projection_dim", 512))
    return Imported(source=directory, format="hf_clip", towers=(), vision=vision, text=text,
                    image_embed_dim=embed, text_embed_dim=embed, has_temperature=True,
                    tokenizer=tokenizer_source(directory))


def _layers(table: Table, dst: str, src: str, depth: int, width: int, mlp_dim: int):
    for i in range(depth):
        d, s = f"{dst}/encoder/block_{i}", f"{src}encoder.layers.{i}."
        table.layer_norm(f"{d}/ln_attn", f"{s}layer_norm1", width)
        table.qkv(f"{d}/attn/qkv", [f"{s}self_attn.{x}_proj" for x in "qkv"], width)
        table.dense(f"{d}/attn/out", f"{s}self_attn.out_proj", width, width)
        table.layer_norm(f"{d}/ln_mlp", f"{s}layer_norm2", width)
        table.dense(f"{d}/mlp/fc1", f"{s}mlp.fc1", mlp_dim, width)
        table.dense(f"{d}/mlp/fc2", f"{s}mlp.fc2", width, mlp_dim)


def _mlp_dim(cfg) -> int:
    return cfg.mlp_dim or int(cfg.width * cfg.mlp_ratio)


def vision_table(v: VisionConfig, embed_dim: int, prefix: str = "vision_model.") -> Table:
    t, D, P = Table(), v.width, v.patch_size
    n = (v.image_size // P) ** 2 + 1
    e = "image_encoder"
    t.conv(f"{e}/patch_embed/kernel", f"{prefix}embeddings.patch_embedding.weight", D,
           v.channels, P)
    t.copy(f"{e}/cls_token", f"{prefix}embeddings.class_embedding", (D,), (1, 1, D))
    t.copy(f"{e}/pos_embed", f"{prefix}embeddings.position_embedding.weight", (n, D), (1, n, D))
    t.layer_norm(f"{e}/pre_norm", f"{prefix}pre_layrnorm", D)
    _layers(t, e, prefix, v.depth, D, _mlp_dim(v))
    t.layer_norm(f"{e}/norm", f"{prefix}post_layernorm", D)
    t.dense("image_proj", "visual_projection", embed_dim, D, bias=False)
    t.skip(r"^vision_model\.embeddings\.position_ids$", "buffer (position indices)")
    return t


def text_table(c: TextConfig, embed_dim: int, prefix: str = "text_model.") -> Table:
    t, D = Table(), c.width
    e = "text_encoder"
    t.copy(f"{e}/token_embed/embedding", f"{prefix}embeddings.token_embedding.weight",
           (c.vocab_size, D))
    t.copy(f"{e}/pos_embed", f"{prefix}embeddings.position_embedding.weight", (c.max_len, D))
    _layers(t, e, prefix, c.depth, D, _mlp_dim(c))
    t.layer_norm(f"{e}/norm", f"{prefix}final_layer_norm", D)
    t.dense("text_proj", "text_projection", embed_dim, D, bias=False)
    t.skip(r"^text_model\.embeddings\.position_ids$", "buffer (position indices)")
    return t


# ---------------------------------------------------------------------------------------------
# Export: the config files of a CLIPModel directory
# ---------------------------------------------------------------------------------------------


def check_exportable(model) -> list[str]:
    """Why ``model`` (a ModelConfig) cannot be written as a CLIPModel; [] when it can."""
    v, t, why = model.vision, model.text, []
    if v.stem != "patch":
        why.append(f"a CLIP ViT patchifies its input (this image tower's stem is {v.stem!r})")
    elif not (v.class_token and v.pooling == "cls" and v.pre_norm and v.final_norm
              and not v.patch_bias and v.norm_position == "pre"):
        why.append("the image tower is not a CLIP ViT (needs class token pooling, pre_norm, "
                   "final_norm, no patch bias, pre-LN blocks)")
    if not (t.causal and t.final_norm and not t.embed_norm and not t.type_vocab_size
            and t.norm_position == "pre" and t.pooling in ("auto", "last")):
        why.append("the text tower is not a CLIP text transformer (needs causal attention, "
                   "end-token pooling, pre-LN blocks, a final LayerNorm)")
    if model.image_proj_bias or model.text_proj_bias or model.text_proj_hidden:
        why.append("CLIPModel projections are single Linears without bias")
    return why


def hf_config(model, eos_token_id: int, pad_token_id: int, bos_token_id: int) -> dict:
    """config.json of a CLIPModel with ``model``'s towers."""
    v, t = model.vision, model.text
    return {
        "architectures": ["CLIPModel"], "model_type": "clip",
        "projection_dim": model.embed_dim, "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": t.vocab_size,
            "hidden_size": t.width, "intermediate_size": _mlp_dim(t),
            "num_hidden_layers": t.depth, "num_attention_heads": t.num_heads,
            "max_position_embeddings": t.max_len, "hidden_act": HF_ACTIVATIONS[t.activation],
            "layer_norm_eps": t.layer_norm_eps, "projection_dim": model.embed_dim,
            "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
            "bos_token_id": bos_token_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.width,
            "intermediate_size": _mlp_dim(v), "num_hidden_layers": v.depth,
            "num_attention_heads": v.num_heads, "num_channels": v.channels,
            "image_size": v.image_size, "patch_size": v.patch_size,
            "hidden_act": HF_ACTIVATIONS[v.activation], "layer_norm_eps": v.layer_norm_eps,
            "projection_dim": model.embed_dim,
        },
    }


def preprocessor_config(v: VisionConfig) -> dict:
    mean = list(v.pixel_mean) or list(OPENAI_MEAN)
    std = list(v.pixel_std) or list(OPENAI_STD)
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": v.image_size}, "do_center_crop": True,
            "crop_size": {"height": v.image_size, "width": v.image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": mean, "image_std": std, "do_convert_rgb": True, "resample": 3}
