"""Tests for rmc_jax.models: towers, region head, two-tower RegionCLIP (tiny sizes, CPU)."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmc_jax.models import (
    ModelConfig,
    RegionCLIP,
    TextConfig,
    TextTransformer,
    VisionConfig,
    VisionTransformer,
    build_model,
    example_inputs,
    init_params,
    model_config,
)

B, R, N, L = 2, 3, 3, 8
IMG, PATCH = 32, 8
GRID = IMG // PATCH


def tiny_config(*, vision=None, text=None, **kw) -> ModelConfig:
    v = dict(image_size=IMG, channels=1, patch_size=PATCH, width=32, depth=2, num_heads=2)
    t = dict(vocab_size=100, width=24, depth=2, num_heads=2, max_len=L)
    v.update(vision or {})
    t.update(text or {})
    kw.setdefault("embed_dim", 16)
    kw.setdefault("roi_output_size", 2)
    return ModelConfig(vision=VisionConfig(**v), text=TextConfig(**t), **kw)


def make_inputs(seed: int = 0, channels: int = 1):
    k = jax.random.split(jax.random.key(seed), 4)
    images = jax.random.normal(k[0], (B, IMG, IMG, channels), jnp.float32)
    xy0 = jax.random.uniform(k[1], (B, R, 2), minval=0.0, maxval=0.5)
    wh = jax.random.uniform(k[2], (B, R, 2), minval=0.2, maxval=0.5)
    boxes = jnp.concatenate([xy0, xy0 + wh], axis=-1)
    box_mask = jnp.array([[True, True, False], [True, False, False]])
    tokens = jax.random.randint(k[3], (N, L), 1, 100, jnp.int32)
    attention_mask = jnp.array(
        [[1] * L, [1] * 5 + [0] * (L - 5), [1] * 2 + [0] * (L - 2)], jnp.int32
    )
    return dict(images=images, boxes=boxes, box_mask=box_mask, tokens=tokens,
                attention_mask=attention_mask)


# Compilation dominates the run time on CPU, so every jitted function is built once per
# (model, method) and reused across tests (models are hashable frozen dataclasses), and LLVM
# optimisation is turned off for these tiny programs (halves compile time; every comparison
# below is between programs compiled the same way).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def jitted(model, method):
    """jit of ``model.apply({'params': p}, *args, method=method)`` as a function of (p, *args)."""
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=method),
                   compiler_options=FAST_COMPILE)


def call(model, params, method, *args):
    return jitted(model, method)(params, *args)


@functools.lru_cache(maxsize=None)
def jitted_init(model):
    return jax.jit(lambda key: init_params(model, key), compiler_options=FAST_COMPILE)


def one_pass(m, images, boxes, box_mask, tokens, attention_mask):
    """Every embedding from one ViT pass, via the public methods (a ``method=`` function)."""
    image, grid = m.image_features(images)
    return {
        "image": image,
        "grid": grid,
        "regions": m.regions_from_patches(grid, boxes, box_mask),
        "patches": m.patches_from_grid(grid),
        "text": m.encode_text(tokens, attention_mask),
        "temperature": m.temperature(),
    }


def core_outputs(model, params, x):
    return call(model, params, one_pass, x["images"], x["boxes"], x["box_mask"], x["tokens"],
                x["attention_mask"])


def all_public_methods(m, images, boxes, box_mask, tokens, attention_mask):
    """Each public RegionCLIP method called separately (a ``method=`` function)."""
    image_features, grid = m.image_features(images)
    return {
        "image": m.encode_image(images),
        "image_features": image_features,
        "grid": grid,
        "regions": m.encode_regions(images, boxes, box_mask),
        "regions_from_patches": m.regions_from_patches(grid, boxes, box_mask),
        "patches": m.encode_patches(images),
        "text": m.encode_text(tokens, attention_mask),
        "temperature": m.temperature(),
        "call": m(images, boxes, box_mask, tokens, attention_mask),
    }


def loss_fn(model, params, x):
    """A scalar touching every output (a stand-in for the training losses), and the outputs."""
    out = model.apply({"params": params}, x["images"], x["boxes"], x["box_mask"], x["tokens"],
                      x["attention_mask"], method=one_pass)
    sim = out["image"] @ out["text"][:B].T / out["temperature"]
    loss = (jax.nn.logsumexp(sim, axis=1).mean() + jnp.sum(out["regions"] ** 3)
            + jnp.sum(out["patches"] ** 3))
    return loss, out


@functools.lru_cache(maxsize=None)
def jitted_grad(model):
    """(params, inputs) -> ((loss, outputs), grads), jitted."""
    return jax.jit(jax.value_and_grad(lambda p, x: loss_fn(model, p, x), has_aux=True),
                   compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config())


@pytest.fixture(scope="module")
def params(model):
    return jitted_init(model)(jax.random.key(0))


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.fixture(scope="module")
def outputs(model, params, inputs):
    """Every public method of the default tiny model, called separately."""
    x = inputs
    return call(model, params, all_public_methods, x["images"], x["boxes"], x["box_mask"],
                x["tokens"], x["attention_mask"])


@pytest.fixture(scope="module")
def loss_and_grads(model, params, inputs):
    """((loss, one-pass outputs), grads) of the default tiny model."""
    return jitted_grad(model)(params, inputs)


@pytest.fixture(scope="module")
def ref_core(model, params, inputs):
    """One-pass outputs of the default tiny model (f32, loop layers, no remat)."""
    return core_outputs(model, params, inputs)


def norms(x):
    return np.linalg.norm(np.asarray(x, np.float64), axis=-1)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------------------------------
# Shapes, dtypes, normalisation
# --------------------------------------------------------------------------------------------


def test_param_tree(params):
    assert set(params) == {"image_encoder", "text_encoder", "region_head", "image_proj",
                           "region_proj", "text_proj", "log_inv_temperature"}
    assert set(params["image_encoder"]["encoder"]) == {"block_0", "block_1"}
    assert set(params["text_encoder"]["encoder"]) == {"block_0", "block_1"}
    assert set(params["image_encoder"]["encoder"]["block_0"]["attn"]) == {"qkv", "out"}  # fused
    for name in ("image_proj", "region_proj", "text_proj"):
        assert set(params[name]) == {"kernel"}  # no bias
    assert params["log_inv_temperature"].shape == ()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_shapes_dtypes_and_normalisation(outputs, inputs):
    E, D = 16, 32
    expected = {
        "image": (B, E), "image_features": (B, E), "regions": (B, R, E),
        "regions_from_patches": (B, R, E), "patches": (B, GRID, GRID, E), "text": (N, E),
    }
    for name, shape in expected.items():
        assert outputs[name].shape == shape, name
        assert outputs[name].dtype == jnp.float32, name
    assert outputs["grid"].shape == (B, GRID, GRID, D)
    assert outputs["temperature"].shape == () and outputs["temperature"].dtype == jnp.float32
    out = outputs["call"]
    assert set(out) == {"image", "regions", "text", "temperature"}

    np.testing.assert_allclose(norms(outputs["image"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(norms(outputs["text"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(norms(outputs["patches"]), 1.0, atol=1e-5)
    mask = np.asarray(inputs["box_mask"])
    regions = np.asarray(outputs["regions"])
    np.testing.assert_allclose(norms(regions)[mask], 1.0, atol=1e-5)
    assert np.all(regions[~mask] == 0.0)

    # The one-pass and per-method paths agree.
    for name in ("image", "regions", "text", "temperature"):
        np.testing.assert_allclose(out[name], outputs[name], rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(outputs["image_features"], outputs["image"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["regions_from_patches"], outputs["regions"], rtol=0,
                               atol=1e-6)


def test_one_and_three_channel_images(model, params, inputs, outputs):
    model3 = build_model(tiny_config(vision={"channels": 3}))
    shapes = jax.eval_shape(lambda: init_params(model3, jax.random.key(0)))
    kernel = shapes["image_encoder"]["patch_embed"]["kernel"]
    assert kernel.shape == (PATCH, PATCH, 3, 32)
    # 3 channels: same params except a 3-channel patch kernel.
    p3 = jax.tree.map(lambda a: a, params)
    p3["image_encoder"] = dict(params["image_encoder"], patch_embed=dict(
        params["image_encoder"]["patch_embed"],
        kernel=0.05 * jax.random.normal(jax.random.key(5), kernel.shape)))
    images3 = make_inputs(channels=3)["images"]
    emb3 = call(model3, p3, RegionCLIP.encode_image, images3)
    assert emb3.shape == (B, 16) and emb3.dtype == jnp.float32
    np.testing.assert_allclose(norms(emb3), 1.0, atol=1e-5)
    assert inputs["images"].shape[-1] == 1  # the default fixture is 1-channel
    np.testing.assert_allclose(norms(outputs["image"]), 1.0, atol=1e-5)


def test_image_size_not_divisible_by_patch_raises(model, params):
    vit = VisionTransformer(VisionConfig(image_size=32, width=32, depth=1, num_heads=2,
                                         patch_size=PATCH))
    with pytest.raises(ValueError, match="36x32 is not divisible by patch_size 8"):
        jax.eval_shape(vit.init, jax.random.key(0), jnp.zeros((1, 36, 32, 1)))
    with pytest.raises(ValueError, match="not divisible"):
        model.apply({"params": params}, jnp.zeros((1, 32, 30, 1)), method=RegionCLIP.encode_image)
    with pytest.raises(ValueError, match="not divisible"):
        VisionConfig(image_size=36, patch_size=8)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def test_masked_boxes_do_not_matter(model, params, inputs, outputs, loss_and_grads):
    mask = inputs["box_mask"]
    garbage = jnp.where(mask[..., None], inputs["boxes"],
                        jnp.array([jnp.nan, -5.0, jnp.inf, 0.3]))
    out = call(model, params, RegionCLIP.encode_regions, inputs["images"], garbage, mask)
    np.testing.assert_array_equal(out, outputs["regions"])
    assert np.all(np.asarray(out)[~np.asarray(mask)] == 0.0)

    # Extra padded boxes appended: the existing regions are unchanged, the new ones zero.
    extra = jnp.concatenate([inputs["boxes"], jnp.full((B, 2, 4), 0.7)], axis=1)
    extra_mask = jnp.concatenate([mask, jnp.zeros((B, 2), bool)], axis=1)
    out = call(model, params, RegionCLIP.encode_regions, inputs["images"], extra, extra_mask)
    np.testing.assert_allclose(out[:, :R], outputs["regions"], rtol=0, atol=1e-6)
    assert np.all(np.asarray(out[:, R:]) == 0.0)

    # Garbage (NaN, inf) in masked boxes does not reach the loss or the gradients either.
    (loss, _), grads = jitted_grad(model)(params, dict(inputs, boxes=garbage))
    (ref_loss, _), ref_grads = loss_and_grads
    assert loss == ref_loss
    assert_trees_equal(grads, ref_grads)


def text_states(model, params, tokens, attention_mask):
    """(pooled, token_states) of the text tower inside RegionCLIP."""
    return call(model, params, _text_tower, tokens, attention_mask)


def _text_tower(m, tokens, attention_mask):
    return m.text_encoder(tokens, attention_mask)


@pytest.mark.parametrize("causal", [False, True])
def test_text_padding_does_not_matter(params, inputs, causal):
    model = build_model(tiny_config(text={"causal": causal}))  # causal adds no params
    tokens, am = inputs["tokens"], inputs["attention_mask"]
    mask = am.astype(bool)
    other = jnp.where(mask, tokens, (tokens * 7 + 3) % 100)
    assert not np.array_equal(other, tokens)
    ref = call(model, params, RegionCLIP.encode_text, tokens, am)
    out = call(model, params, RegionCLIP.encode_text, other, am)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(norms(ref), 1.0, atol=1e-5)

    _, states = text_states(model, params, tokens, am)
    _, states2 = text_states(model, params, other, am)
    m = np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(states)[m], np.asarray(states2)[m])


def test_causal_pooling_and_no_lookahead(params, inputs):
    model = build_model(tiny_config(text={"causal": True}))
    tokens, am = inputs["tokens"], inputs["attention_mask"]
    pooled, states = text_states(model, params, tokens, am)
    last = np.asarray(am).sum(1) - 1
    np.testing.assert_array_equal(pooled, np.asarray(states)[np.arange(N), last])

    # Change real token 3 of rows 0 and 1: earlier states unchanged, later ones changed.
    changed = tokens.at[:2, 3].set((tokens[:2, 3] + 1) % 100)
    _, states2 = text_states(model, params, changed, am)
    np.testing.assert_array_equal(states2[:2, :3], states[:2, :3])
    assert not np.allclose(states2[:2, 3:5], states[:2, 3:5])


def test_bidirectional_sees_later_tokens(model, params, inputs):
    tokens, am = inputs["tokens"], inputs["attention_mask"]
    pooled, states = text_states(model, params, tokens, am)
    np.testing.assert_array_equal(pooled, states[:, 0])  # CLS pooling
    changed = tokens.at[0, 3].set((tokens[0, 3] + 1) % 100)
    _, states2 = text_states(model, params, changed, am)
    assert not np.allclose(states2[0, :3], states[0, :3])


# --------------------------------------------------------------------------------------------
# Determinism, precision, layer layouts
# --------------------------------------------------------------------------------------------


def test_determinism(model, params, inputs, outputs):
    again = jitted_init(build_model(tiny_config()))(jax.random.key(0))
    assert_trees_equal(again, params)
    x = inputs
    out = call(model, again, all_public_methods, x["images"], x["boxes"], x["box_mask"],
               x["tokens"], x["attention_mask"])
    assert_trees_equal(out, outputs)

    other = jitted_init(model)(jax.random.key(1))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other)):
        if np.ptp(np.asarray(a)) > 0:  # skip constant inits (zeros, ones, temperature)
            assert not np.allclose(a, b)


def test_bfloat16_compute_close_to_float32(params, inputs, ref_core):
    """bf16 compute, same f32 params: every embedding has cosine > 0.999 with the f32 one
    (observed > 0.9999 at these sizes; max abs diff ~0.007)."""
    cfg = tiny_config(vision={"dtype": "bfloat16"}, text={"dtype": "bfloat16"})
    model16 = build_model(cfg)
    p16 = jax.eval_shape(lambda: init_params(model16, jax.random.key(0)))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p16))
    assert jax.tree.map(jnp.shape, p16) == jax.tree.map(jnp.shape, params)
    ref = ref_core
    out16 = core_outputs(model16, params, inputs)
    assert out16["grid"].dtype == jnp.bfloat16
    mask = np.asarray(inputs["box_mask"])
    for name in ("image", "regions", "patches", "text"):
        a, b = np.asarray(out16[name]), np.asarray(ref[name])
        assert a.dtype == np.float32
        cos = (a * b).sum(-1)
        if name == "regions":
            cos = cos[mask]
            assert np.all(a[~mask] == 0.0)
        assert cos.min() > 0.999, (name, cos.min())


def restack(params, towers=("image_encoder", "text_encoder")):
    """Per-layer block params (block_i) -> the scan layout (blocks, leading [depth] axis)."""
    params = dict(params)
    for tower in towers:
        enc = params[tower]["encoder"]
        blocks = [enc[f"block_{i}"] for i in range(len(enc))]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
        params[tower] = dict(params[tower], encoder={"blocks": stacked})
    return params


def test_scan_layers_equals_loop(params, inputs, ref_core):
    scanned = build_model(tiny_config(vision={"scan_layers": True}, text={"scan_layers": True}))
    p_scan = jax.eval_shape(lambda: init_params(scanned, jax.random.key(0)))
    stacked = restack(params)
    assert jax.tree.map(jnp.shape, p_scan) == jax.tree.map(jnp.shape, stacked)
    out = core_outputs(scanned, stacked, inputs)
    for name in ("image", "grid", "regions", "patches", "text"):
        np.testing.assert_allclose(out[name], ref_core[name], rtol=0, atol=1e-5, err_msg=name)


def assert_close_to_scale(actual, desired, tol, what=""):
    """|actual - desired| <= tol * max|desired|, elementwise (gradients span many scales)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    scale = max(float(np.abs(desired).max()), 1e-30)
    err = float(np.abs(actual - desired).max())
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol} * {scale:.3g}"


def test_remat_same_outputs_and_gradients(params, inputs, loss_and_grads):
    """Rematerialisation changes memory, not the function: outputs (to 1e-5) and gradients
    (to 1e-5 of each leaf's largest entry: the backward recomputes the forward in a different
    op order) match remat='none'. One model covers both policies: remat='full' inside nn.scan
    in the image tower (gradients compared after restacking), 'dots' on looped text layers."""
    rm = build_model(tiny_config(vision={"remat": "full", "scan_layers": True},
                                 text={"remat": "dots"}))
    (loss, out), grads = jitted_grad(rm)(restack(params, ("image_encoder",)), inputs)
    (ref_loss, ref_out), ref_grads = loss_and_grads
    ref_grads = restack(ref_grads, ("image_encoder",))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for name in ("image", "grid", "regions", "patches", "text"):
        np.testing.assert_allclose(out[name], ref_out[name], rtol=0, atol=1e-5, err_msg=name)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree.leaves(ref_grads)):
        assert_close_to_scale(g, r, 1e-5, jax.tree_util.keystr(path))


# --------------------------------------------------------------------------------------------
# Temperature
# --------------------------------------------------------------------------------------------


def test_temperature(model, params, outputs):
    assert outputs["temperature"] == pytest.approx(0.07, rel=1e-6)
    np.testing.assert_allclose(params["log_inv_temperature"], math.log(1 / 0.07), rtol=1e-6)

    def temperature(p):
        return model.apply({"params": p}, method=RegionCLIP.temperature)

    tau, dtau = jax.jit(temperature), jax.jit(jax.grad(temperature))

    clamped = dict(params, log_inv_temperature=jnp.float32(math.log(100.0) + 1.0))
    assert tau(clamped) == np.float32(0.01)
    assert dtau(clamped)["log_inv_temperature"] == 0.0
    huge = dict(params, log_inv_temperature=jnp.float32(1e4))  # exp overflows: still finite
    assert tau(huge) == np.float32(0.01)
    assert dtau(huge)["log_inv_temperature"] == 0.0

    g = dtau(params)["log_inv_temperature"]  # d tau / d log(1/tau) = -tau
    assert g == pytest.approx(-0.07, rel=1e-5)


def test_logit_bias_is_a_param_only_where_learnt(params):
    """learn_logit_bias adds one float32 scalar 'logit_bias' (init_logit_bias) and changes
    nothing else; without it the model has no such param and asking for it says how to get it."""
    model = build_model(tiny_config(learn_logit_bias=True, init_logit_bias=-7.5))
    with_bias = jitted_init(model)(jax.random.key(0))
    assert set(with_bias) - set(params) == {"logit_bias"}
    assert with_bias["logit_bias"].shape == () and with_bias["logit_bias"].dtype == jnp.float32
    assert model.apply({"params": with_bias}, method=RegionCLIP.logit_bias) == -7.5
    assert jax.grad(lambda p: model.apply({"params": p}, method=RegionCLIP.logit_bias))(
        with_bias)["logit_bias"] == 1.0
    assert_trees_equal({k: v for k, v in with_bias.items() if k != "logit_bias"}, params)
    with pytest.raises(ValueError, match="learn_logit_bias=True"):
        build_model(tiny_config()).apply({"params": params}, method=RegionCLIP.logit_bias)


# --------------------------------------------------------------------------------------------
# Patch map vs 1x1 regions
# --------------------------------------------------------------------------------------------


def test_encode_patches_matches_one_cell_regions(params, inputs):
    """Aligned RoIAlign with a 1x1 output and one sample per bin, over the box
    [j/w, i/h, (j+1)/w, (i+1)/h], samples exactly the centre of cell (i, j), i.e. that patch
    token; so that region's embedding equals encode_patches at (i, j)."""
    model = build_model(tiny_config(roi_output_size=1, roi_sampling_ratio=1))
    i, j = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    i, j = i.ravel(), j.ravel()
    cells = np.stack([j / GRID, i / GRID, (j + 1) / GRID, (i + 1) / GRID], -1).astype(np.float32)
    x = dict(inputs, boxes=jnp.broadcast_to(jnp.asarray(cells), (B, GRID * GRID, 4)),
             box_mask=jnp.ones((B, GRID * GRID), bool))
    out = core_outputs(model, params, x)
    np.testing.assert_allclose(out["regions"], out["patches"].reshape(B, GRID * GRID, -1),
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# jit, gradients, configs
# --------------------------------------------------------------------------------------------


def test_gradients_finite_and_reach_every_param(loss_and_grads):
    (loss, _), grads = loss_and_grads
    assert np.isfinite(loss)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.any(g != 0), jax.tree_util.keystr(path)


def test_towers_standalone():
    vit = VisionTransformer(VisionConfig(image_size=16, channels=3, width=32, depth=1,
                                         num_heads=2, patch_size=8))
    (cls, grid), _ = jax.eval_shape(vit.init_with_output, jax.random.key(0),
                                    jnp.zeros((2, 16, 24, 3)))
    assert cls.shape == (2, 32) and grid.shape == (2, 2, 3, 32)
    txt = TextTransformer(TextConfig(vocab_size=50, width=16, depth=1, num_heads=2, max_len=6))
    tok = jnp.zeros((2, 6), jnp.int32)
    (pooled, states), _ = jax.eval_shape(txt.init_with_output, jax.random.key(0), tok, tok)
    assert pooled.shape == (2, 16) and states.shape == (2, 6, 16)
    tok = jnp.zeros((2, 7), jnp.int32)
    with pytest.raises(ValueError, match="max_len"):
        jax.eval_shape(txt.init_with_output, jax.random.key(0), tok, tok)


def test_build_model_from_mapping_and_configdict():
    cfg = tiny_config()
    as_dict = dataclasses.asdict(cfg)
    assert model_config(as_dict) == cfg
    assert build_model(as_dict) == build_model(cfg) == RegionCLIP.from_config(cfg)
    assert model_config(None) == ModelConfig()
    assert model_config({"embed_dim": 8}) == ModelConfig(embed_dim=8)
    with pytest.raises(ValueError, match="unknown vision config keys"):
        model_config({"vision": {"widht": 8}})
    with pytest.raises(ValueError, match="remat"):
        VisionConfig(remat="some")
    ml_collections = pytest.importorskip("ml_collections")
    cd = ml_collections.ConfigDict(dict(as_dict, roi_output_size=[2, 2]))
    assert model_config(cd) == dataclasses.replace(cfg, roi_output_size=(2, 2))
    model = build_model(cd)
    assert model.vision.dtype == "float32"
    x = example_inputs(model, 2, 3)
    assert x["images"].shape == (2, IMG, IMG, 1) and x["boxes"].shape == (2, 3, 4)
    assert x["tokens"].shape == (2, L)


def test_smaller_images_interpolate_position_embeddings(model, params):
    """Region crops smaller than the training size (the teacher's input) reuse the table."""
    crops = jax.random.normal(jax.random.key(3), (4, IMG // 2, IMG // 2, 1))
    emb = jax.jit(functools.partial(model.apply, method=RegionCLIP.encode_image))(
        {"params": params}, crops)
    assert emb.shape == (4, model.embed_dim) and bool(jnp.all(jnp.isfinite(emb)))
    vit = VisionTransformer(VisionConfig(width=8, depth=1, num_heads=2, patch_size=4,
                                         image_size=8))
    variables = jax.jit(vit.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    table = variables["params"]["pos_embed"]
    assert table.shape == (1, 5, 8)
    # A constant table interpolates to the same constant: resizing changes layout, not values.
    constant = jax.tree.map(lambda x: x, variables)
    constant["params"]["pos_embed"] = jnp.ones_like(table)
    apply = jax.jit(vit.apply)  # one compile, not one per operation
    small, _ = apply(constant, jnp.zeros((1, 4, 4, 1)))
    zero_pos = jax.tree.map(lambda x: x, variables)
    zero_pos["params"]["pos_embed"] = jnp.zeros_like(table)
    assert not np.allclose(small, apply(zero_pos, jnp.zeros((1, 4, 4, 1)))[0])


def test_sincos2d_positions_are_the_transformer_codes_of_column_then_row():
    from rmc_jax.models.vit import sincos2d_positions

    grid_h, grid_w, width = 3, 5, 8                    # two frequencies per axis and function
    table = sincos2d_positions(grid_h, grid_w, width)
    assert table.shape == (grid_h * grid_w, width) and table.dtype == np.float32
    for patch in range(grid_h * grid_w):
        row, col = divmod(patch, grid_w)               # row-major, as the patch tokens are laid
        expected = []
        for fn, index in ((math.sin, col), (math.cos, col), (math.sin, row), (math.cos, row)):
            expected += [fn(index / 10_000 ** (i / 2)) for i in range(2)]
        np.testing.assert_allclose(table[patch], expected, rtol=1e-6, atol=1e-7)


def test_vision_tower_position_table_starts_from_its_position_init():
    from rmc_jax.models.vit import sincos2d_positions

    def table(position_init, class_token=True):
        config = VisionConfig(width=8, depth=1, num_heads=2, patch_size=4, image_size=12,
                              position_init=position_init, class_token=class_token,
                              pooling="cls" if class_token else "mean")
        variables = jax.eval_shape(VisionTransformer(config).init, jax.random.key(0),
                                   jnp.zeros((1, 12, 12, 1)))
        assert variables["params"]["pos_embed"].shape == (1, 9 + class_token, 8)
        return np.asarray(VisionTransformer(config).init(
            jax.random.key(0), jnp.zeros((1, 12, 12, 1)))["params"]["pos_embed"][0])

    codes = table("sincos2d")
    np.testing.assert_array_equal(codes[0], 0.0)                 # the class token's row
    np.testing.assert_array_equal(codes[1:], sincos2d_positions(3, 3, 8))
    np.testing.assert_array_equal(table("sincos2d", class_token=False), sincos2d_positions(3, 3, 8))
    drawn = table("normal")
    assert 0.005 < drawn.std() < 0.05 and not np.allclose(drawn[1:], codes[1:])
    with pytest.raises(ValueError, match="position_init='fourier'"):
        VisionConfig(position_init="fourier")
    with pytest.raises(ValueError, match="width divisible by 4"):
        VisionConfig(width=6, num_heads=2, position_init="sincos2d")


def test_conv_stem_keeps_the_token_grid_and_sees_only_nearby_pixels():
    from rmc_jax.models.vit import ConvStem

    config = VisionConfig(width=32, depth=1, num_heads=2, patch_size=8, image_size=32,
                          stem="conv")
    vit = VisionTransformer(config)
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 1))
    p = jax.jit(vit.init)(jax.random.key(1), images)["params"]
    # log2(8) = 3 stride-2 3x3 convolutions, channels doubling up to the width, then 1x1
    assert "patch_embed" not in p
    assert [p["stem"][f"conv_{i}"]["kernel"].shape for i in range(3)] == [
        (3, 3, 1, 8), (3, 3, 8, 16), (3, 3, 16, 32)]
    assert p["stem"]["proj"]["kernel"].shape == (1, 1, 32, 32)

    @jax.jit
    def outputs(p, x):
        """(pooled, grid, the stem's tokens alone, gradients of the pooled output)."""
        pooled, grid = vit.apply({"params": p}, x)
        grads = jax.grad(lambda p: jnp.sum(vit.apply({"params": p}, x)[0] ** 2))(p)
        return pooled, grid, ConvStem(32, 8, 3).apply({"params": p["stem"]}, x), grads

    pooled, grid, tokens, grads = outputs(p, images)
    assert pooled.shape == (1, 32) and grid.shape == (1, 4, 4, 32)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads["stem"]))
    # A pixel in cell (1, 1) reaches that cell's token and its neighbours' (the 3x3 kernels
    # overlap the cell edges), never a token two cells away.
    moved = np.abs(np.asarray(outputs(p, images.at[0, 12, 12, 0].add(5.0))[2] - tokens))
    moved = moved.max(-1)[0] > 0
    assert moved[1, 1] and not moved[3].any() and not moved[:, 3].any()
    # fewer 3x3 layers: a patchify convolution of the rest first (8 / 2^1 = 4 pixels)
    shallow = VisionTransformer(dataclasses.replace(config, stem_convs=1))
    q = jax.eval_shape(shallow.init, jax.random.key(1), images)["params"]["stem"]
    assert q["patchify"]["kernel"].shape == (4, 4, 1, 16)
    assert q["conv_0"]["kernel"].shape == (3, 3, 16, 32) and "conv_1" not in q
    with pytest.raises(ValueError, match="power-of-two patch size"):
        VisionConfig(image_size=28, patch_size=14, stem="conv")
    with pytest.raises(ValueError, match="stem='hybrid'"):
        VisionConfig(stem="hybrid")


def test_exact_gelu_is_flax_exact_gelu():
    from rmc_jax.models.layers import exact_gelu

    x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float32)
    # 1 + erf(x / sqrt 2) cancels for very negative x (as in PyTorch's formula): the absolute
    # error is float32's eps times |x| / 2, under 1e-6 on [-8, 8]; elsewhere 1e-6 relative.
    np.testing.assert_allclose(exact_gelu(x), jax.nn.gelu(x, approximate=False),
                               rtol=1e-6, atol=1e-6)
    g = jax.vmap(jax.grad(exact_gelu))(x)
    np.testing.assert_allclose(g, jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, False)))(x),
                               rtol=1e-5, atol=1e-6)
    assert exact_gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


def _bf16(a):
    """NumPy float32 copy of ``a`` rounded to bfloat16 (as the model rounds activations)."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))


def test_dense_in_float32_is_flax_dense_exactly():
    import flax.linen as nn

    from rmc_jax.models.layers import Dense

    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    ours, flax_dense = Dense(8), nn.Dense(8)
    params = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, flax_dense.init(jax.random.key(1), x))
    np.testing.assert_array_equal(ours.apply(params, x), flax_dense.apply(params, x))

    def loss(module):
        return lambda p, v: jnp.sum(jnp.sin(module.apply(p, v)))
    for a, b in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                    jax.tree.leaves(jax.grad(loss(flax_dense), argnums=(0, 1))(params, x))):
        np.testing.assert_array_equal(a, b)


def test_dense_in_bfloat16_accumulates_in_float32_forward_and_backward():
    """bf16 operands, float32 sums: the output is the float32 product of the bf16-rounded
    operands plus the bias, rounded once; the input gradient likewise; the kernel and bias
    gradients are float32 sums never rounded to 16 bits (a bf16-rounded one would be off by
    ~1e-3 relative, 100x the tolerance)."""
    from rmc_jax.models.layers import Dense

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (4, 33, 96))
    layer = Dense(80, dtype=jnp.bfloat16)
    params = layer.init(k2, x)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(k3, p.shape), params)
    kernel, bias = (np.asarray(params["params"][k]) for k in ("kernel", "bias"))
    y = layer.apply(params, x)
    assert y.dtype == jnp.bfloat16
    xb, kb = _bf16(x), _bf16(kernel)
    expected = xb @ kb + bias
    np.testing.assert_allclose(np.asarray(y, np.float32), _bf16(expected), rtol=8e-3, atol=1e-6)

    cotangent = jax.random.normal(k3, y.shape)
    grads_p, grad_x = jax.vjp(lambda p, v: layer.apply(p, v), params, x)[1](
        cotangent.astype(jnp.bfloat16))
    gb = _bf16(cotangent)
    assert grad_x.dtype == jnp.float32  # the caller's dtype; its values are bf16-rounded
    np.testing.assert_allclose(grad_x, _bf16(gb @ kb.T), rtol=8e-3, atol=1e-6)
    assert grads_p["params"]["kernel"].dtype == jnp.float32
    np.testing.assert_allclose(grads_p["params"]["kernel"],
                               np.einsum("btk,btn->kn", xb, gb), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grads_p["params"]["bias"], gb.sum((0, 1)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_attention_matches_float32_attention_on_the_same_inputs(causal):
    """The 16-bit attention (float32 sums, custom backward) against jax.nn's float32 attention
    on the bf16-rounded inputs: outputs and q/k/v gradients within bf16 rounding, padded keys
    ignored."""
    from rmc_jax.models.layers import dot_product_attention

    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, g = (jax.random.normal(key, (3, 11, 2, 8)).astype(jnp.bfloat16) for key in keys)
    mask = (jnp.arange(11) < jnp.asarray([11, 7, 4])[:, None])[:, None, None, :]

    def reference(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)

    ours, grads = jax.vjp(lambda *x: dot_product_attention(*x, mask, causal), q, k, v)
    f32 = tuple(x.astype(jnp.float32) for x in (q, k, v))
    expected, expected_grads = jax.vjp(reference, *f32)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours, np.float32), expected, rtol=2e-2, atol=1e-2)
    for got, want in zip(grads(g), expected_grads(g.astype(jnp.float32))):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=2e-2)
    # Keys past each sequence's length get no attention and no gradient.
    grad_k = np.asarray(grads(g)[1], np.float32)
    assert np.all(grad_k[1, 7:] == 0) and np.all(grad_k[2, 4:] == 0)


def test_auto_compute_dtype_is_bfloat16_where_bf16_units_exist(tmp_path, monkeypatch):
    from rmc_jax.models import layers

    intel = tmp_path / "amx"
    intel.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    amd = tmp_path / "zen3"
    amd.write_text("flags\t\t: fpu sse2 avx2 fma f16c vaes\n")
    assert layers._cpu_has_bf16_units.__wrapped__(str(intel))
    assert not layers._cpu_has_bf16_units.__wrapped__(str(amd))
    assert not layers._cpu_has_bf16_units.__wrapped__(str(tmp_path / "missing"))
    for units, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(layers, "_cpu_has_bf16_units", lambda units=units: units)
        assert layers.fast_compute_dtype("cpu") == expected
        assert layers.canonical_dtype("auto") == jnp.dtype(expected)  # this test runs on CPU
        assert layers.fast_compute_dtype("gpu") == layers.fast_compute_dtype("tpu") == "bfloat16"
    with pytest.raises(ValueError, match="'float32', 'bfloat16' or 'auto'"):
        layers.canonical_dtype("bf16")


# --------------------------------------------------------------------------------------------
# Kernels per backend: the choice, and what the lowered training computation runs
# --------------------------------------------------------------------------------------------


def test_kernel_choice_per_platform_and_dtype():
    from rmc_jax.models.layers import Kernels, choose_kernels, kernel_platform, kernels_for

    assert kernel_platform() == "cpu"  # the tests run on the CPU backend
    bf16 = jnp.bfloat16
    assert choose_kernels(bf16, 64, "cpu") == Kernels("custom", "custom")
    assert choose_kernels(jnp.float16, 64, "cuda") == Kernels("plain", "cudnn")
    assert choose_kernels(bf16, 64, "tpu") == choose_kernels(bf16, 64, "rocm") == Kernels(
        "plain", "xla")
    # Head sizes cuDNN's fused attention does not take fall back to XLA's attention.
    assert choose_kernels(bf16, 12, "cuda").attention == "xla"
    assert choose_kernels(bf16, 256, "cuda").attention == "xla"
    for platform in ("cpu", "cuda", "tpu"):
        assert choose_kernels(jnp.float32, 64, platform) == Kernels("plain", "xla")
    with kernels_for("tpu"):
        assert kernel_platform() == "tpu" and choose_kernels(bf16, 64).attention == "xla"
    assert kernel_platform() == "cpu"
    with pytest.raises(ValueError, match="expected one of"):
        with kernels_for("gpu"):
            pass


def _dots(stablehlo: str) -> list[tuple[str, str]]:
    """(operand element type, result element type) of every dot_general in a module."""
    pattern = re.compile(r"stablehlo\.dot_general .*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>"
                         r"\) -> tensor<[^>]*x(\w+)>")
    return [(a, c) for a, b, c in pattern.findall(stablehlo) if a == b]


def _lowered_gradient(platform: str) -> str:
    """StableHLO of the gradient of a bf16 model's image and text embeddings, traced with
    ``platform``'s kernels and lowered for ``platform`` (no device of that kind needed)."""
    from rmc_jax.models.layers import kernels_for

    cfg = tiny_config(vision=dict(depth=1, dtype="bfloat16"),  # 17 tokens: odd, as a ViT's
                      text=dict(depth=1, dtype="bfloat16", width=32))
    model = build_model(cfg)
    x = make_inputs()
    params = jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))

    def loss(p):
        image = model.apply({"params": p}, x["images"], method=RegionCLIP.encode_image)
        text = model.apply({"params": p}, x["tokens"], x["attention_mask"],
                           method=RegionCLIP.encode_text)
        return jnp.sum(image) + jnp.sum(text)

    with kernels_for(platform):
        traced = jax.jit(jax.grad(loss)).trace(params)
    return traced.lower(lowering_platforms=(platform,)).as_text()


def test_lowered_kernels_cpu_custom_tpu_plain_xla():
    """CPU: every 16-bit matmul (dense and attention, forward and backward) returns float32
    sums, the custom-VJP kernels' signature. TPU: the dense layers are plain bf16 -> bf16 dots,
    attention is XLA's, no cuDNN."""
    cpu = _lowered_gradient("cpu")
    dots = [d for d in _dots(cpu) if d[0] == "bf16"]
    assert dots and all(result == "f32" for _, result in dots), dots
    assert "cudnn" not in cpu
    tpu = _lowered_gradient("tpu")
    assert ("bf16", "bf16") in _dots(tpu) and "cudnn" not in tpu


def test_lowered_kernels_cuda_use_cudnn_attention_and_plain_dense(monkeypatch):
    """Lowered for CUDA on this CPU-only machine: attention forward and backward are cuDNN's
    fused-attention custom calls (the ViT's odd token count and the text's key padding
    included) and every bf16 matmul left is a plain bf16 -> bf16 dot (cuBLAS accumulates in
    float32 by itself): no trace of the CPU's custom-VJP kernels. JAX checks the installed
    cuDNN version when it traces cuDNN attention; with no CUDA install here that check is
    stubbed (what it gates, the kernel's availability on a device, needs a GPU)."""
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    if not hasattr(fused, "check_cudnn_version"):
        pytest.skip("this JAX traces cuDNN attention differently; the GPU run checks it")
    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
    cuda = _lowered_gradient("cuda")
    calls = re.findall(r"custom_call @(__cudnn\$fmha\w*)", cuda)
    assert {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"} <= set(calls), calls
    assert len(calls) == 4  # one layer per tower, forward and backward
    dots = [d for d in _dots(cuda) if d[0] == "bf16"]
    assert dots and all(result == "bf16" for _, result in dots), dots


@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_attention_wrapper_keeps_the_masked_attention(monkeypatch, causal):
    """What the cuDNN path feeds cuDNN (key lengths from the right-padded mask, one padding
    row for odd lengths) computes the same attention: checked here with jax.nn's XLA
    implementation of the same call (the kernel itself needs a GPU), values and gradients."""
    from rmc_jax.models import layers

    real = jax.nn.dot_product_attention
    monkeypatch.setattr(layers.jax.nn, "dot_product_attention",
                        lambda *a, implementation=None, **kw: real(*a, implementation="xla", **kw))
    keys = jax.random.split(jax.random.key(1), 4)
    q, k, v, g = (jax.random.normal(key, (3, 11, 2, 8)) for key in keys)  # 11 tokens: odd
    mask = (jnp.arange(11) < jnp.asarray([11, 7, 4])[:, None])[:, None, None, :]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def both(q, k, v, g):
        out = []
        for key_mask in (mask, None):
            for attention in (lambda *x: layers._cudnn_attention(*x, key_mask, causal),
                              lambda *x: real(*x, mask=key_mask, is_causal=causal)):
                value, vjp = jax.vjp(attention, q, k, v)
                out.append((value, vjp(g)))
        return out

    ours, want, ours_unmasked, want_unmasked = both(q, k, v, g)
    for a, b in zip(jax.tree.leaves((ours, ours_unmasked)), jax.tree.leaves((want, want_unmasked))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
