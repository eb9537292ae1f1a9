"""Hugging Face BERT-family directories (text tower only) <-> rmc_jax.

Covers ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining`` checkpoints of the biomedical
BERTs (BiomedBERT/PubMedBERT, Bio_ClinicalBERT, CXR-BERT's encoder) and sentence-transformers
directories such as all-MiniLM-L6-v2:

    [bert.]embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    [bert.]encoder.layer.{i}.attention.self.{query,key,value}
    [bert.]encoder.layer.{i}.attention.output.{dense, LayerNorm}
    [bert.]encoder.layer.{i}.intermediate.dense, .output.{dense, LayerNorm}
    [bert.]pooler.dense                        (mapped only for pooling='pooler')

BERT is post-LN: LN(x + Attn(x)), LN(x + MLP(x)), with a LayerNorm on the summed embeddings
and none after the last layer. Every token has token type 0 (single-segment text).

Pooling: 'cls' (token 0 of the last hidden state) by default; a sentence-transformers
directory's ``1_Pooling/config.json`` selects 'mean' or 'cls'; 'pooler' gives BERT's
``pooler_output`` (tanh(Dense(token 0))). Old checkpoints that name LayerNorm parameters
``gamma``/``beta`` are read as ``weight``/``bias``.
"""

from __future__ import annotations

import os

from rmc_jax.models import TextConfig
from rmc_jax.pretrained.common import HF_ACTIVATIONS, Imported, activation, read_json
from rmc_jax.pretrained.common import tokenizer_source
from rmc_jax.pretrained.mapping import Table

__all__ = ["BERT_MODEL_TYPES", "config_from_dir", "text_config", "text_table", "hf_config",
           "rename_legacy", "sentence_pooling"]

BERT_MODEL_TYPES = ("bert", "cxr-bert")
_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512,
                 type_vocab_size=2, layer_norm_eps=1e-12, position_embedding_type="absolute")


def sentence_pooling(directory: str) -> str | None:
    """'mean' / 'cls' from a sentence-transformers directory's pooling config, else None."""
    path = os.path.join(directory, "1_Pooling", "config.json")
    if not os.path.isfile(path):
        return None
    cfg = read_json(path)
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
    raise ValueError(f"{path}: pooling {modes} is not supported; supported: mean tokens, CLS "
                     "token")


def text_config(cfg: dict, where: str, pooling: str) -> TextConfig:
    c = {**_DEFAULTS, **cfg}
    if c["position_embedding_type"] != "absolute":
        raise ValueError(f"{where}: position_embedding_type {c['position_embedding_type']!r} "
                         "is not supported (only 'absolute')")
    return TextConfig(
        vocab_size=int(c["vocab_size"]), width=int(c["hidden_size"]),
        depth=int(c["num_hidden_layers"]), num_heads=int(c["num_attention_heads"]),
        mlp_ratio=c["intermediate_size"] / c["hidden_size"], mlp_dim=int(c["intermediate_size"]),
        max_len=int(c["max_position_embeddings"]), causal=False,
        activation=activation(c["hidden_act"], f"{where} hidden_act"), norm_position="post",
        layer_norm_eps=float(c["layer_norm_eps"]), embed_norm=True, final_norm=False,
        type_vocab_size=int(c["type_vocab_size"]), pooling=pooling,
    )


def config_from_dir(directory: str, pooling: str | None = None) -> Imported:
    """Text tower of a BERT-family directory (no weights). ``pooling`` overrides the default
    ('cls', or what a sentence-transformers pooling config says)."""
    where = os.path.join(directory, "config.json")
    cfg = read_json(where)
    model_type = cfg.get("model_type")
    if model_type not in BERT_MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not a BERT-family model "
                         f"{BERT_MODEL_TYPES}")
    pooling = pooling or sentence_pooling(directory) or "cls"
    return Imported(source=directory, format="hf_bert", towers=("text",),
                    text=text_config(cfg, where, pooling), tokenizer=tokenizer_source(directory))


def rename_legacy(tensors: dict) -> dict:
    """LayerNorm.gamma/beta (TF-converted checkpoints) -> LayerNorm.weight/bias."""
    if not any(k.endswith((".gamma", ".beta")) for k in tensors):
        return tensors
    out = {}
    for name, value in tensors.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = value
    return out


def detect_prefix(tensors) -> str:
    """'' for BertModel files, 'bert.' for BertForMaskedLM / BertForPreTraining / CXR-BERT."""
    return "bert." if any(k.startswith("bert.embeddings.") for k in tensors) else ""


def text_table(c: TextConfig, prefix: str = "") -> Table:
    t, D = Table(), c.width
    H = c.mlp_dim or int(D * c.mlp_ratio)
    e, p = "text_encoder", f"{prefix}embeddings."
    t.copy(f"{e}/token_embed/embedding", f"{p}word_embeddings.weight", (c.vocab_size, D))
    t.copy(f"{e}/pos_embed", f"{p}position_embeddings.weight", (c.max_len, D))
    t.copy(f"{e}/type_embed", f"{p}token_type_embeddings.weight", (c.type_vocab_size, D))
    t.layer_norm(f"{e}/embed_norm", f"{p}LayerNorm", D)
    for i in range(c.depth):
        d, s = f"{e}/encoder/block_{i}", f"{prefix}encoder.layer.{i}."
        t.qkv(f"{d}/attn/qkv", [f"{s}attention.self.{x}" for x in ("query", "key", "value")], D)
        t.dense(f"{d}/attn/out", f"{s}attention.output.dense", D, D)
        t.layer_norm(f"{d}/ln_attn", f"{s}attention.output.LayerNorm", D)
        t.dense(f"{d}/mlp/fc1", f"{s}intermediate.dense", H, D)
        t.dense(f"{d}/mlp/fc2", f"{s}output.dense", D, H)
        t.layer_norm(f"{d}/ln_mlp", f"{s}output.LayerNorm", D)
    escaped = prefix.replace(".", r"\.")
    if c.pooling == "pooler":
        t.dense(f"{e}/pooler", f"{prefix}pooler.dense", D, D)
    else:
        t.skip(rf"^{escaped}pooler\.dense\.", f"BERT pooler, unused with {c.pooling!r} pooling")
    t.skip(rf"^{escaped}embeddings\.position_ids$", "buffer (position indices)")
    return t


def pretraining_heads(table: Table, prefix: str = "") -> None:
    """Skips for the heads that sit next to the encoder in pretraining checkpoints."""
    table.skip(r"^cls\.", "pretraining head (masked-LM / next-sentence), not part of the encoder")
    table.skip(r"^cls_projection_head\.", "CXR-BERT projection head, not part of the encoder")


def check_exportable(text: TextConfig) -> list[str]:
    if not (not text.causal and text.norm_position == "post" and text.embed_norm
            and not text.final_norm and text.type_vocab_size
            and text.pooling in ("cls", "mean", "pooler")):
        return ["the text tower is not a BERT encoder (needs post-LN blocks, an embedding "
                "LayerNorm, token-type embeddings, no final LayerNorm, bidirectional attention)"]
    return []


def hf_config(text: TextConfig) -> dict:
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": text.vocab_size,
        "hidden_size": text.width, "num_hidden_layers": text.depth,
        "num_attention_heads": text.num_heads,
        "intermediate_size": text.mlp_dim or int(text.width * text.mlp_ratio),
        "hidden_act": HF_ACTIVATIONS[text.activation],
        "max_position_embeddings": text.max_len, "type_vocab_size": text.type_vocab_size,
        "layer_norm_eps": text.layer_norm_eps, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0,
    }


def sentence_pooling_config(text: TextConfig) -> dict:
    return {"word_embedding_dimension": text.width,
            "pooling_mode_cls_token": text.pooling == "cls",
            "pooling_mode_mean_tokens": text.pooling == "mean",
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}


def infer_text_config(tensors: dict, prefix: str, where: str, *, pooling: str,
                      num_heads: int | None = None, layer_norm_eps: float = 1e-12,
                      hidden_act: str = "gelu") -> TextConfig:
    """BERT text config from tensor shapes alone (open_clip directories do not ship the HF
    config of their text tower). Heads default to width / 64, as in every BERT size."""
    def shape(name):
        if f"{prefix}{name}" not in tensors:
            raise ValueError(f"{where}: tensor {prefix}{name} not found; the text tower is not "
                             "a BERT encoder")
        return tensors[f"{prefix}{name}"].shape

    vocab, width = shape("embeddings.word_embeddings.weight")
    max_len = shape("embeddings.position_embeddings.weight")[0]
    types = shape("embeddings.token_type_embeddings.weight")[0]
    layer = f"{prefix}encoder.layer."
    depth = len({k[len(layer):].split(".")[0] for k in tensors if k.startswith(layer)})
    mlp = shape("encoder.layer.0.intermediate.dense.weight")[0]
    return TextConfig(
        vocab_size=int(vocab), width=int(width), depth=depth,
        num_heads=num_heads or max(int(width) // 64, 1), mlp_ratio=mlp / width, mlp_dim=int(mlp),
        max_len=int(max_len), causal=False, activation=activation(hidden_act, where),
        norm_position="post", layer_norm_eps=layer_norm_eps, embed_norm=True, final_norm=False,
        type_vocab_size=int(types), pooling=pooling)
