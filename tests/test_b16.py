"""configs/b16.py: ViT-B/16 + BERT-base in BiomedCLIP's shapes.

BiomedCLIP-layout open_clip directories are written here without PyTorch: at full size as a
sparse file (the tensors' names and shapes are all the configuration check reads; the file's
800 MB of zeros take no disk space), and at a tiny size with random weights, which a run then
starts from. The full-size model also compiles and trains a few steps on a tiny batch.
"""

from __future__ import annotations

import json
import os
import struct
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)
from configs.b16 import get_config  # noqa: E402
from test_train import fixed_batch_losses  # noqa: E402  (the step on one fixed batch)

from rmc_jax import pretrained, train  # noqa: E402
from rmc_jax.data.tokenizer import train_wordpiece  # noqa: E402
from rmc_jax.models import build_model, example_inputs, model_config  # noqa: E402
from rmc_jax.pretrained import open_clip  # noqa: E402
from rmc_jax.pretrained.mapping import flatten  # noqa: E402
from rmc_jax.pretrained.weight_files import save_safetensors  # noqa: E402

# BiomedCLIP-PubMedBERT_256-vit_base_patch16_224: open_clip_config.json as published.
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711]}}
FULL = dict(width=768, depth=12, mlp=3072, image=224, patch=16, text_width=768, text_depth=12,
            text_mlp=3072, vocab=30522, positions=512, embed=512)


def biomedclip_shapes(width, depth, mlp, image, patch, text_width, text_depth, text_mlp, vocab,
                      positions, embed) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a BiomedCLIP checkpoint (timm ViT with open_clip's linear
    head; PubMedBERT without its pooler, open_clip's MLP text projection; logit scale)."""
    t, b = "visual.trunk.", "text.transformer."
    tokens = (image // patch) ** 2 + 1
    shapes = {f"{t}cls_token": (1, 1, width), f"{t}pos_embed": (1, tokens, width),
              f"{t}patch_embed.proj.weight": (width, 3, patch, patch),
              f"{t}patch_embed.proj.bias": (width,), f"{t}norm.weight": (width,),
              f"{t}norm.bias": (width,), "visual.head.proj.weight": (embed, width),
              f"{b}embeddings.word_embeddings.weight": (vocab, text_width),
              f"{b}embeddings.position_embeddings.weight": (positions, text_width),
              f"{b}embeddings.token_type_embeddings.weight": (2, text_width),
              f"{b}embeddings.LayerNorm.weight": (text_width,),
              f"{b}embeddings.LayerNorm.bias": (text_width,),
              "text.proj.0.weight": ((text_width + embed) // 2, text_width),
              "text.proj.2.weight": (embed, (text_width + embed) // 2), "logit_scale": ()}
    for i in range(depth):
        s = f"{t}blocks.{i}."
        for name, shape in (("norm1", (width,)), ("norm2", (width,)),
                            ("attn.qkv", (3 * width, width)), ("attn.proj", (width, width)),
                            ("mlp.fc1", (mlp, width)), ("mlp.fc2", (width, mlp))):
            shapes[f"{s}{name}.weight"] = shape
            shapes[f"{s}{name}.bias"] = shape[:1]
    for i in range(text_depth):
        s = f"{b}encoder.layer.{i}."
        for name, shape in (("attention.self.query", (text_width, text_width)),
                            ("attention.self.key", (text_width, text_width)),
                            ("attention.self.value", (text_width, text_width)),
                            ("attention.output.dense", (text_width, text_width)),
                            ("attention.output.LayerNorm", (text_width,)),
                            ("intermediate.dense", (text_mlp, text_width)),
                            ("output.dense", (text_width, text_mlp)),
                            ("output.LayerNorm", (text_width,))):
            shapes[f"{s}{name}.weight"] = shape
            shapes[f"{s}{name}.bias"] = shape[:1]
    return shapes


def write_sparse_safetensors(path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """A float32 safetensors file of zeros whose data is a hole in the file (no disk space)."""
    header, offset = {}, 0
    for name in sorted(shapes):
        size = 4 * int(np.prod(shapes[name], dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        f.truncate(8 + len(encoded) + offset)


@pytest.fixture(scope="module")
def biomedclip_full(tmp_path_factory):
    directory = tmp_path_factory.mktemp("biomedclip")
    (directory / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP_CONFIG))
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    write_sparse_safetensors(str(directory / "open_clip_model.safetensors"),
                             biomedclip_shapes(**FULL))
    return str(directory)


def test_b16_parameters_have_biomedclip_shapes(biomedclip_full):
    """The B/16 config is BiomedCLIP's architecture: importing BiomedCLIP into it changes no
    model setting, image size or text length, and every tensor the importer maps lands on a
    parameter of exactly that shape; the only parameters BiomedCLIP does not provide are the
    region head's (and the region projection, which starts as a copy of the image one)."""
    config = get_config("roi")
    spec = f"open_clip:{biomedclip_full}"
    imported = pretrained.describe(spec)
    assert pretrained.model_config_from(imported, imported, model_config(config.model)) == \
        model_config(config.model)
    with_init = get_config("roi")
    with_init.init.update(image=spec, text=spec)
    resolved = pretrained.resolve_config(with_init)
    assert model_config(resolved.model) == model_config(config.model)
    assert (resolved.data.image_size, resolved.data.max_text_len) == (224, 256)
    assert resolved.data.tokenizer == biomedclip_full

    model = build_model(config.model)
    abstract = jax.eval_shape(lambda k: model.init(k, **example_inputs(model))["params"],
                              jax.random.key(0))
    expected = {path: tuple(x.shape) for path, x in flatten(abstract).items()}
    entries = (open_clip.vision_table(imported).entries
               + open_clip.text_table(imported).entries)
    mapped = {e.dst: e.dst_shape for e in entries} | {"log_inv_temperature": ()}
    assert {p: expected.get(p) for p in mapped} == mapped
    rest = sorted(set(expected) - set(mapped))
    assert rest and all(p.startswith("region_head/") or p == "region_proj/kernel" for p in rest)
    assert expected["region_proj/kernel"] == expected["image_proj/kernel"] == (768, 512)
    parameters = sum(int(np.prod(s)) for s in expected.values())
    assert 196e6 < parameters < 198e6  # ViT-B/16 85.8M + BERT-base 108.9M + projections + head


# --------------------------------------------------------------------------------------------
# A run starts from a tiny directory of BiomedCLIP's layout with the init flags alone
# --------------------------------------------------------------------------------------------

TINY = dict(width=192, depth=1, mlp=64, image=32, patch=8, text_width=128, text_depth=1,
            text_mlp=64, positions=512, embed=16)   # ViT 'tiny': 3 heads; BERT: 2 heads of 64


@pytest.fixture(scope="module")
def biomedclip_tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("biomedclip_tiny")
    source = train.data_sources.open_source("synthetic", "", "train", 32, 0, 32)
    tokenizer = train_wordpiece(train.corpus(source, 32), vocab_size=300, max_len=256)
    tokenizer.save(str(directory))
    config = json.loads(json.dumps(BIOMEDCLIP_CONFIG))
    config["model_cfg"].update(embed_dim=TINY["embed"])
    config["model_cfg"]["vision_cfg"].update(timm_model_name="vit_tiny_patch8_32", image_size=32)
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    tensors = {name: (0.05 * rng.standard_normal(shape)).astype(np.float32)
               for name, shape in biomedclip_shapes(vocab=tokenizer.vocab_size, **TINY).items()}
    save_safetensors(str(directory / "open_clip_model.safetensors"), tensors)
    return str(directory), tensors


def test_b16_run_starts_from_a_biomedclip_directory(biomedclip_tiny, tmp_path):
    """Only the init flags (and run-size knobs) on top of configs/b16.py: the run takes the
    directory's architecture, image size and tokenizer, trains, and its towers start from the
    directory's weights (the first step's learning rate is 0: warmup). The objective does not
    change what is loaded: the 'global' one keeps the compile short."""
    directory, tensors = biomedclip_tiny
    config = get_config("global,steps=1,batch=2")
    config.init.update(image=f"open_clip:{directory}", text=f"open_clip:{directory}")
    config.update(log_every=1, progress_bar="off")
    config.data.update(workers=0, train_size=16)
    config.evals.enabled = False
    config.mesh.data = 1
    result = train.train(config, str(tmp_path))
    vocab = tensors["text.transformer.embeddings.word_embeddings.weight"].shape[0]
    assert np.isfinite(result["metrics"]["total"]) and result["tokenizer"].vocab_size == vocab
    params = flatten(jax.device_get(result["state"]["params"]))
    assert params["image_encoder/pos_embed"].shape == (1, 17, 192)
    np.testing.assert_array_equal(params["image_encoder/encoder/block_0/mlp/fc1/kernel"],
                                  tensors["visual.trunk.blocks.0.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(params["text_proj/fc2/kernel"],
                                  tensors["text.proj.2.weight"].T)
    np.testing.assert_array_equal(
        params["text_encoder/token_embed/embedding"],
        tensors["text.transformer.embeddings.word_embeddings.weight"])
    saved = json.loads((tmp_path / "model_config.json").read_text())
    assert saved["model"]["text"]["norm_position"] == "post"
    assert saved["model"]["text_proj_hidden"] == (128 + 16) // 2


# --------------------------------------------------------------------------------------------
# The full-size model compiles and trains on the CPU
# --------------------------------------------------------------------------------------------


def b16(variant: str = "roi", *, batch: int = 2, depth: int | None = None, text_len: int = 32,
        res: int = 224):
    """configs/b16.py:<variant> at a tiny batch for tests: both towers scanned (one compiled
    layer each), reports cut to ``text_len`` tokens; ``depth`` fewer layers and ``res`` smaller
    images (a smaller position table) if given."""
    config = get_config(f"{variant},batch={batch},steps=2,res={res}")
    for tower in (config.model.vision, config.model.text):
        tower.scan_layers = True
        if depth:
            tower.depth = depth
    config.data.update(max_text_len=text_len, workers=0, train_size=16)
    config.teacher.warmup_steps = 0
    config.evals.enabled = False
    return config


def test_b16_compiles_and_trains_on_cpu():
    """The full ViT-B/16 + BERT-base model, every loss term on (EMA teacher included), two
    steps on a batch of two 224 px examples: finite losses, gradients and updates."""
    history = fixed_batch_losses(b16("roi"), steps=2, mesh_devices=1)
    for metrics in history:
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["grad_norm"] > 0 and metrics["finite"]
    assert history[1]["learning_rate"] > 0
