"""rmc_jax.losses against plain NumPy references, and dense == tiled == gather == ring."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import rmc_jax.losses as L

# ------------------------------------------------------------------------------------------
# NumPy references, written from the definitions (float64).
# ------------------------------------------------------------------------------------------


def np_logsumexp(x):
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


def np_global(img, txt, tau, ids=None):
    logits = img @ txt.T / tau
    n = len(img)
    ids = np.arange(n) if ids is None else ids
    i2t = [np_logsumexp(logits[i]) - np_logsumexp(logits[i, ids == ids[i]]) for i in range(n)]
    t2i = [np_logsumexp(logits[:, j]) - np_logsumexp(logits[ids == ids[j], j]) for j in range(n)]
    return 0.5 * (np.mean(i2t) + np.mean(t2i))


def np_sigmoid(img, txt, tau, bias, ids=None, valid=None):
    """SigLIP: -(1/N) sum over valid pairs (i, j) of log sigmoid(z_ij (s_ij / tau + bias))."""
    n = len(img)
    ids = np.arange(n) if ids is None else ids
    valid = np.ones(n, bool) if valid is None else valid
    total = 0.0
    for i in np.flatnonzero(valid):
        for j in np.flatnonzero(valid):
            z = 1.0 if ids[i] == ids[j] else -1.0
            total += np.log1p(np.exp(-z * (img[i] @ txt[j] / tau + bias)))
    return total / max(valid.sum(), 1)


def np_roi(roi, cap, mask, tau, ids=None):
    b, r, e = roi.shape
    roi, cap, mask = roi.reshape(-1, e), cap.reshape(-1, e), mask.reshape(-1)
    ids = np.arange(b * r) if ids is None else ids.reshape(-1)
    losses = []
    for i in np.flatnonzero(mask):
        logits = np.array([roi[i] @ cap[j] / tau for j in np.flatnonzero(mask)])
        positives = np.array([ids[j] == ids[i] for j in np.flatnonzero(mask)])
        losses.append(np_logsumexp(logits) - np_logsumexp(logits[positives]))
    return np.mean(losses) if losses else 0.0


def np_negative(roi, cap, neg, mask, neg_mask, tau):
    losses = []
    for bi, ri in zip(*np.nonzero(mask)):
        positive = roi[bi, ri] @ cap[bi, ri] / tau
        negatives = [roi[bi, ri] @ neg[bi, ri, k] / tau for k in np.flatnonzero(neg_mask[bi, ri])]
        losses.append(np_logsumexp(np.array([positive] + negatives)) - positive)
    return np.mean(losses) if losses else 0.0


def np_distill(student, teacher, mask, ts, tt):
    def log_softmax(x):
        return x - np.array([np_logsumexp(row) for row in x.reshape(-1, x.shape[-1])]).reshape(
            x.shape[:-1] + (1,))
    lt, ls = log_softmax(teacher / tt), log_softmax(student / ts)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    return kl[mask].mean() if mask.any() else 0.0


def np_sentence(img, sent, ids, image_ids, tau):
    """Each text (id >= 0) against all images; positives: every image that lists its id or has
    a text with its id (its own image among them)."""
    losses = []
    for b, s in zip(*np.nonzero(ids >= 0)):
        logits = img @ sent[b, s] / tau
        positive = np.array([ids[b, s] in set(image_ids[j]) | set(ids[j])
                             for j in range(len(img))])
        losses.append(np_logsumexp(logits) - np_logsumexp(logits[positive]))
    return np.mean(losses) if losses else 0.0


def numerical_grad(f, x, eps=1e-6):
    """Central differences of a NumPy function of one float64 array."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        g[idx] = (f(up) - f(down)) / (2 * eps)
    return g


def normed(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


# ------------------------------------------------------------------------------------------
# Values and gradients against the references.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_global_matches_numpy(rng, tau, chunk_size):
    img, txt = normed(rng, 7, 5), normed(rng, 7, 5)
    loss = functools.partial(L.global_contrastive_loss, chunk_size=chunk_size)
    value = loss(*f32(img, txt), tau)
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(value, np_global(img, txt, tau), rtol=1e-5)
    g_img, g_txt, g_tau = jax.grad(loss, argnums=(0, 1, 2))(*f32(img, txt), jnp.float32(tau))
    np.testing.assert_allclose(g_img, numerical_grad(lambda x: np_global(x, txt, tau), img),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(g_txt, numerical_grad(lambda x: np_global(img, x, tau), txt),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(g_tau, numerical_grad(lambda t: np_global(img, txt, t),
                                                     np.array(tau)), rtol=1e-3)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_global_pair_ids_make_pairs_positives_together(rng, chunk_size):
    """Pairs sharing an id (here 0, 2 and 5; 3 and 6) are positives of each other in both
    directions; unique ids give plain InfoNCE."""
    img, txt = normed(rng, 7, 5), normed(rng, 7, 5)
    ids = np.array([-1, 4, -1, 9, 7, -1, 9])
    tau = 0.1
    loss = functools.partial(L.global_contrastive_loss, chunk_size=chunk_size)
    value, grads = jax.value_and_grad(
        lambda a, b: loss(a, b, tau, pair_ids=jnp.asarray(ids)), argnums=(0, 1))(*f32(img, txt))
    np.testing.assert_allclose(value, np_global(img, txt, tau, ids), rtol=1e-5)
    assert abs(float(value) - np_global(img, txt, tau)) > 1e-3
    np.testing.assert_allclose(
        grads[0], numerical_grad(lambda x: np_global(x, txt, tau, ids), img), rtol=1e-3,
        atol=1e-5)
    np.testing.assert_allclose(
        grads[1], numerical_grad(lambda x: np_global(img, x, tau, ids), txt), rtol=1e-3,
        atol=1e-5)
    unique = loss(*f32(img, txt), tau, pair_ids=jnp.arange(7) * 3 + 11)
    np.testing.assert_allclose(unique, loss(*f32(img, txt), tau), rtol=1e-6)


@pytest.mark.parametrize("tau,bias", [(0.1, -10.0), (0.5, 0.3)])
@pytest.mark.parametrize("with_ids_and_mask", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_sigmoid_matches_numpy(rng, tau, bias, with_ids_and_mask, chunk_size):
    """Value and gradients (embeddings, temperature, bias) of SigLIP's loss, with pairs that
    share an id (positives together) and pairs left out, dense and tiled."""
    img, txt = normed(rng, 7, 5), normed(rng, 7, 5)
    ids = np.array([-1, 4, -1, 9, 7, -1, 9]) if with_ids_and_mask else None
    valid = np.array([1, 1, 0, 1, 1, 1, 0], bool) if with_ids_and_mask else None
    extra = ({"pair_ids": jnp.asarray(ids), "pair_mask": jnp.asarray(valid)}
             if with_ids_and_mask else {})

    def loss(a, b, t, c):
        return L.sigmoid_contrastive_loss(a, b, t, c, chunk_size=chunk_size, **extra)

    def reference(a=img, b=txt, t=tau, c=bias):
        return np_sigmoid(a, b, t, c, ids, valid)

    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(
        *f32(img, txt), jnp.float32(tau), jnp.float32(bias))
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(value, reference(), rtol=1e-5)
    expected = (numerical_grad(lambda x: reference(a=x), img),
                numerical_grad(lambda x: reference(b=x), txt),
                numerical_grad(lambda t: reference(t=t), np.array(tau)),
                numerical_grad(lambda c: reference(c=c), np.array(bias)))
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    if with_ids_and_mask:  # left-out pairs: no gradient, and the loss of the kept pairs alone
        assert not np.asarray(grads[0][~valid]).any() and not np.asarray(grads[1][~valid]).any()
        kept = L.sigmoid_contrastive_loss(*f32(img[valid], txt[valid]), tau, bias,
                                          pair_ids=jnp.asarray(ids[valid]))
        np.testing.assert_allclose(kept, value, rtol=1e-6)


def test_sigmoid_is_one_sum_over_pairs_and_checks_its_bias(rng):
    """Swapping the towers gives the same loss (every pair counts once, no direction), unique
    ids are the default, and a bias that is not a scalar is refused."""
    img, txt = f32(normed(rng, 6, 4), normed(rng, 6, 4))
    value = L.sigmoid_contrastive_loss(img, txt, 0.1, -2.0)
    np.testing.assert_allclose(L.sigmoid_contrastive_loss(txt, img, 0.1, -2.0), value,
                               rtol=1e-6)
    np.testing.assert_allclose(
        L.sigmoid_contrastive_loss(img, txt, 0.1, -2.0, pair_ids=jnp.arange(6) * 5 + 2), value,
        rtol=1e-6)
    assert float(L.sigmoid_contrastive_loss(img, txt, 0.1, -2.0,
                                            pair_mask=jnp.zeros(6, bool))) == 0.0
    with pytest.raises(ValueError, match="bias must be a scalar"):
        L.sigmoid_contrastive_loss(img, txt, 0.1, jnp.zeros(6))
    with pytest.raises(ValueError, match=r"pair_ids must have shape \[N\]"):
        L.sigmoid_contrastive_loss(img, txt, 0.1, 0.0, pair_ids=jnp.zeros(5, jnp.int32))


@pytest.mark.parametrize("with_ids", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_roi_matches_numpy(rng, with_ids, chunk_size):
    roi, cap = normed(rng, 3, 4, 6), normed(rng, 3, 4, 6)
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], bool)
    # Ids 5 and 9 repeat: regions described by the same sentence are positives together.
    ids = np.array([[5, 1, 5, 9], [2, 3, 4, 5], [9, 7, 8, 5]]) if with_ids else None
    tau = 0.1
    loss = functools.partial(L.roi_contrastive_loss, roi_mask=jnp.asarray(mask),
                             caption_ids=None if ids is None else jnp.asarray(ids),
                             chunk_size=chunk_size)
    value = loss(*f32(roi, cap), temperature=tau)
    np.testing.assert_allclose(value, np_roi(roi, cap, mask, tau, ids), rtol=1e-5)
    g_roi, g_cap = jax.grad(lambda a, b: loss(a, b, temperature=tau), argnums=(0, 1))(
        *f32(roi, cap))
    np.testing.assert_allclose(
        g_roi, numerical_grad(lambda x: np_roi(x, cap, mask, tau, ids), roi), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(
        g_cap, numerical_grad(lambda x: np_roi(roi, x, mask, tau, ids), cap), rtol=1e-3, atol=1e-5)
    # Masked regions get no gradient at all, as anchors or as negatives.
    assert np.all(np.asarray(g_roi)[~mask] == 0) and np.all(np.asarray(g_cap)[~mask] == 0)


def test_roi_with_unique_ids_equals_default(rng):
    roi, cap = f32(normed(rng, 2, 3, 4), normed(rng, 2, 3, 4))
    mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
    ids = jnp.arange(6).reshape(2, 3) * 7 + 100
    np.testing.assert_allclose(L.roi_contrastive_loss(roi, cap, mask, 0.2),
                               L.roi_contrastive_loss(roi, cap, mask, 0.2, caption_ids=ids),
                               rtol=1e-6)


def test_roi_all_masked_is_zero_without_nan(rng):
    roi, cap = f32(normed(rng, 2, 3, 4), normed(rng, 2, 3, 4))
    mask = jnp.zeros((2, 3), bool)
    for chunk_size in (None, 2):
        loss = functools.partial(L.roi_contrastive_loss, roi_mask=mask, temperature=0.1,
                                 chunk_size=chunk_size)
        assert loss(roi, cap) == 0.0
        grads = jax.grad(loss, argnums=(0, 1))(roi, cap)
        assert all(np.all(np.asarray(g) == 0) for g in grads)


def _sentence_case(rng, b=4, s=3, m=5, e=6):
    """Images, their sampled sentences (ids; -1 padding, image 2 has none) and id sets: id 7
    is stated by images 0, 1 and 3 (image 3 lists it without sampling it), id 9 by image 1
    alone, which did not list it (a text's own image is always its positive)."""
    img, sent = normed(rng, b, e), normed(rng, b, s, e)
    ids = np.array([[7, 3, -1], [7, 9, 4], [-1, -1, -1], [5, 7, 6]])
    image_ids = np.array([[7, 3, -1, -1, -1], [7, 4, 8, -1, -1], [1, -1, -1, -1, -1],
                          [5, 7, 6, 2, 7]])
    return img, sent, ids, image_ids


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_sentence_image_matches_numpy(rng, chunk_size):
    img, sent, ids, image_ids = _sentence_case(rng)
    tau = 0.2
    loss = functools.partial(L.sentence_image_loss, sentence_ids=jnp.asarray(ids),
                             image_sentence_ids=jnp.asarray(image_ids), chunk_size=chunk_size)
    value = loss(*f32(img, sent), temperature=tau)
    np.testing.assert_allclose(value, np_sentence(img, sent, ids, image_ids, tau), rtol=1e-5)
    g_img, g_sent = jax.grad(lambda a, b: loss(a, b, temperature=tau), argnums=(0, 1))(
        *f32(img, sent))
    np.testing.assert_allclose(
        g_img, numerical_grad(lambda x: np_sentence(x, sent, ids, image_ids, tau), img),
        rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(
        g_sent, numerical_grad(lambda x: np_sentence(img, x, ids, image_ids, tau), sent),
        rtol=1e-3, atol=1e-5)
    # Padding texts are no anchors: no gradient reaches them.
    assert np.all(np.asarray(g_sent)[ids < 0] == 0)


def test_sentence_image_positives_are_the_images_that_state_it(rng):
    """An image that states the sentence is a positive (it raises the positive mass), one that
    does not is a negative: listing a shared sentence lowers the loss when that image is
    closest to the text, and the function reduces to CLIP's text -> image InfoNCE when every
    text is its own image's alone."""
    img, sent = f32(normed(rng, 3, 4), normed(rng, 3, 1, 4))
    sent = sent.at[0, 0].set(img[1])                   # text 0 lies on image 1
    ids = jnp.array([[10], [11], [12]])
    alone = jnp.full((3, 1), -1)
    shared = jnp.array([[-1], [10], [-1]])              # image 1 states text 0 too
    loss = functools.partial(L.sentence_image_loss, temperature=0.1)
    assert loss(img, sent, ids, shared) < loss(img, sent, ids, alone)
    clip_t2i = np.mean([np_logsumexp(np.asarray(img) @ np.asarray(sent[i, 0]) / 0.1)
                        - np.asarray(img[i]) @ np.asarray(sent[i, 0]) / 0.1 for i in range(3)])
    np.testing.assert_allclose(loss(img, sent, ids, alone), clip_t2i, rtol=1e-5)


def test_sentence_image_checks_shapes(rng):
    img, sent = f32(normed(rng, 3, 4), normed(rng, 3, 2, 4))
    ids = jnp.zeros((3, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"sent \[B, S, E\]"):
        L.sentence_image_loss(img, sent[:2], ids, ids, 0.1)
    with pytest.raises(ValueError, match="sentence_ids must have shape"):
        L.sentence_image_loss(img, sent, ids[:, :1], ids, 0.1)
    with pytest.raises(ValueError, match="image_sentence_ids must have shape"):
        L.sentence_image_loss(img, sent, ids, ids[:2], 0.1)


def test_negative_caption_matches_numpy(rng):
    b, r, k, e = 2, 3, 4, 5
    roi, cap, neg = normed(rng, b, r, e), normed(rng, b, r, e), normed(rng, b, r, k, e)
    mask = np.array([[1, 0, 1], [1, 1, 0]], bool)
    neg_mask = rng.random((b, r, k)) > 0.4
    neg_mask[0, 2] = False  # a region with no negatives at all: loss 0 for it
    tau = 0.05
    loss = functools.partial(L.negative_caption_loss, roi_mask=jnp.asarray(mask),
                             neg_mask=jnp.asarray(neg_mask), temperature=tau)
    value = loss(*f32(roi, cap, neg))
    np.testing.assert_allclose(value, np_negative(roi, cap, neg, mask, neg_mask, tau), rtol=1e-5)
    grads = jax.grad(loss, argnums=(0, 1, 2))(*f32(roi, cap, neg))
    references = [
        numerical_grad(lambda x: np_negative(x, cap, neg, mask, neg_mask, tau), roi),
        numerical_grad(lambda x: np_negative(roi, x, neg, mask, neg_mask, tau), cap),
        numerical_grad(lambda x: np_negative(roi, cap, x, mask, neg_mask, tau), neg),
    ]
    for g, ref in zip(grads, references):
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(grads[2])[~neg_mask] == 0)


def medclip_package_losses():
    """The ``medclip`` package's own ``medclip/losses.py`` (0.0.3), loaded by file path: the
    package's ``__init__`` imports its models and with them torchvision, which the tests do not
    install (``pip install --no-deps medclip==0.0.3``; losses.py itself needs torch only)."""
    import importlib.metadata
    import importlib.util
    import os

    pytest.importorskip("torch")
    spec = importlib.util.find_spec("medclip")
    if spec is None:
        pytest.skip("the medclip package is not installed: pip install --no-deps medclip==0.0.3")
    assert importlib.metadata.version("medclip") == "0.0.3"
    path = os.path.join(spec.submodule_search_locations[0], "losses.py")
    module_spec = importlib.util.spec_from_file_location("medclip_losses_0_0_3", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("n,c,tau", [(8, 5, 0.07), (6, 14, 0.5)])
def test_medclip_loss_matches_the_medclip_package(rng, n, c, tau, dtype, rtol):
    """Value and gradients (image and text embeddings) against MedCLIP's
    ``ImageTextContrastiveLoss._soft_clip_loss`` on its logits img @ txt.T * exp(logit_scale)."""
    import torch

    reference = medclip_package_losses().ImageTextContrastiveLoss(model=None)
    img, txt = normed(rng, n, 16).astype(dtype), normed(rng, n, 16).astype(dtype)
    img_labels = rng.integers(-1, 2, (n, c)).astype(dtype)   # 1 / 0 / -1 as MedCLIP encodes
    txt_labels = rng.integers(-1, 2, (n, c)).astype(dtype)
    img_labels[0] = 0                                          # no label known at all
    t_img, t_txt = (torch.tensor(x, requires_grad=True) for x in (img, txt))
    scale = 1 / torch.tensor(tau, dtype=t_img.dtype)         # MedCLIPModel.compute_logits
    logits = (torch.matmul(t_txt, t_img.t()) * scale).t()
    expected = reference._soft_clip_loss(
        logits, torch.matmul(torch.tensor(img_labels), torch.tensor(txt_labels).T))
    expected.backward()
    with jax.enable_x64(dtype == "float64"):
        args = tuple(jnp.asarray(x, dtype) for x in (img, txt, img_labels, txt_labels))
        value, grads = jax.value_and_grad(L.medclip_contrastive_loss, argnums=(0, 1))(
            *args, jnp.asarray(tau, dtype))
        assert value.dtype == dtype
    np.testing.assert_allclose(value, expected.item(), rtol=rtol)
    for grad, ref in zip(grads, (t_img.grad.numpy(), t_txt.grad.numpy())):
        np.testing.assert_allclose(grad, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def test_medclip_labels_encoding_and_loss_properties(rng):
    labels = jnp.array([[1, 0, 1, 0], [0, 0, 1, 1]], jnp.float32)
    mask = jnp.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)
    np.testing.assert_array_equal(L.medclip_labels(labels, mask), [[1, -1, 0, 0], [-1, 0, 1, 1]])
    img, txt = normed(rng, 6, 8), normed(rng, 6, 8)
    y = L.medclip_labels(jnp.asarray(rng.random((6, 3)) > 0.5, jnp.float32),
                         jnp.asarray(rng.random((6, 3)) > 0.2))
    full = L.medclip_contrastive_loss(*f32(img, txt), y, y, 0.1)
    half = L.medclip_contrastive_loss(jnp.asarray(img, jnp.bfloat16),
                                      jnp.asarray(txt, jnp.bfloat16), y, y, 0.1)
    assert half.dtype == jnp.float32 and full.shape == ()
    np.testing.assert_allclose(half, full, rtol=2e-2)
    batched = jax.vmap(jax.jit(L.medclip_contrastive_loss), in_axes=(0, 0, None, None, None))(
        *f32(normed(rng, 2, 6, 8), normed(rng, 2, 6, 8)), y, y, 0.1)
    assert batched.shape == (2,) and np.all(np.isfinite(batched))
    # Very sharp label targets (one class shared by nobody else) approach plain InfoNCE.
    sharp = 50.0 * jnp.eye(6)
    np.testing.assert_allclose(L.medclip_contrastive_loss(*f32(img, txt), sharp, sharp, 0.1),
                               np_global(img, txt, 0.1), rtol=1e-5)
    with pytest.raises(ValueError, match="img_labels and txt_labels"):
        L.medclip_contrastive_loss(*f32(img, txt), y, y[:, :2], 0.1)
    with pytest.raises(ValueError, match="one row per embedding"):
        L.medclip_contrastive_loss(*f32(img, txt), y[:4], y[:4], 0.1)


@pytest.mark.parametrize("temps", [(1.0, 1.0), (0.01, 0.01), (0.5, 2.0)])
def test_distillation_matches_numpy(rng, temps):
    ts, tt = temps
    student, teacher = rng.normal(size=(2, 3, 6)) * 0.3, rng.normal(size=(2, 3, 6)) * 0.3
    mask = np.array([[1, 0, 1], [1, 1, 0]], bool)
    loss = functools.partial(L.distillation_loss, mask=jnp.asarray(mask),
                             student_temperature=ts, teacher_temperature=tt)
    value = loss(*f32(student, teacher))
    np.testing.assert_allclose(value, np_distill(student, teacher, mask, ts, tt), rtol=1e-4)
    g_student, g_teacher = jax.grad(loss, argnums=(0, 1))(*f32(student, teacher))
    np.testing.assert_allclose(
        g_student, numerical_grad(lambda x: np_distill(x, teacher, mask, ts, tt), student),
        rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(g_teacher) == 0), "the teacher must get no gradient"


def test_distillation_zero_when_equal_and_handles_masked_concepts(rng):
    logits = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    mask = jnp.ones((4,), bool)
    assert abs(float(L.distillation_loss(logits, logits, mask))) < 1e-6
    teacher = logits.at[:, 0].set(-jnp.inf)  # a concept the teacher rules out entirely
    value = L.distillation_loss(logits, teacher, mask)
    assert np.isfinite(value) and value > 0


def test_check_grads_float64(rng):
    with jax.enable_x64(True):
        img, txt = jnp.asarray(normed(rng, 5, 3)), jnp.asarray(normed(rng, 5, 3))
        roi, cap = jnp.asarray(normed(rng, 2, 3, 3)), jnp.asarray(normed(rng, 2, 3, 3))
        neg = jnp.asarray(normed(rng, 2, 3, 2, 3))
        mask = jnp.array([[1, 1, 0], [1, 0, 1]], bool)
        tau = jnp.float64(0.3)
        rev = dict(order=1, modes=["rev"])  # the tiled path is a custom VJP: reverse mode only
        both = dict(order=1, modes=["fwd", "rev"])
        cases = [
            (lambda a, b, t: L.global_contrastive_loss(a, b, t), (img, txt, tau), both),
            (lambda a, b, t: L.global_contrastive_loss(a, b, t, chunk_size=2), (img, txt, tau),
             rev),
            (lambda a, b, t, c: L.sigmoid_contrastive_loss(a, b, t, c), (img, txt, tau, -1.0),
             both),
            (lambda a, b, t, c: L.sigmoid_contrastive_loss(a, b, t, c, chunk_size=2),
             (img, txt, tau, jnp.float64(-1.0)), both),
            (lambda a, b: L.roi_contrastive_loss(a, b, mask, 0.3, chunk_size=4), (roi, cap), rev),
            (lambda a, b, n: L.negative_caption_loss(a, b, n, mask, jnp.ones((2, 3, 2), bool), 0.3),
             (roi, cap, neg), both),
            (lambda s: L.distillation_loss(s, jnp.ones((2, 3, 4)), mask, student_temperature=0.5),
             (jnp.asarray(rng.normal(size=(2, 3, 4))),), both),
        ]
        for fn, args, modes in cases:
            check_grads(jax.jit(fn), args, **modes)


# ------------------------------------------------------------------------------------------
# Properties: bf16 inputs, jit, vmap, total_loss, errors.
# ------------------------------------------------------------------------------------------


def test_bfloat16_inputs_give_float32_close_to_float32(rng):
    img, txt = normed(rng, 16, 8), normed(rng, 16, 8)
    full = L.global_contrastive_loss(*f32(img, txt), 0.07)
    for chunk_size in (None, 5):
        half = L.global_contrastive_loss(jnp.asarray(img, jnp.bfloat16),
                                         jnp.asarray(txt, jnp.bfloat16), 0.07,
                                         chunk_size=chunk_size)
        assert half.dtype == jnp.float32
        np.testing.assert_allclose(half, full, rtol=2e-2)
        grad = jax.grad(L.global_contrastive_loss)(jnp.asarray(img, jnp.bfloat16),
                                                   jnp.asarray(txt, jnp.bfloat16), 0.07)
        assert grad.dtype == jnp.bfloat16


def test_jit_and_vmap(rng):
    img, txt = f32(normed(rng, 3, 6, 4), normed(rng, 3, 6, 4))
    for chunk_size in (None, 4):
        loss = jax.jit(functools.partial(L.global_contrastive_loss, chunk_size=chunk_size))
        batched = jax.vmap(loss, in_axes=(0, 0, None))(img, txt, 0.1)
        looped = jnp.stack([loss(img[i], txt[i], 0.1) for i in range(3)])
        np.testing.assert_allclose(batched, looped, rtol=1e-6)
        grads = jax.vmap(jax.grad(loss), in_axes=(0, 0, None))(img, txt, 0.1)
        np.testing.assert_allclose(grads[1], jax.grad(loss)(img[1], txt[1], 0.1), rtol=1e-5,
                                   atol=1e-7)
    roi, cap = f32(normed(rng, 3, 2, 3, 4), normed(rng, 3, 2, 3, 4))
    mask = jnp.asarray(rng.random((3, 2, 3)) > 0.3)
    neg = jnp.asarray(normed(rng, 3, 2, 3, 2, 4), jnp.float32)
    neg_mask = jnp.ones((3, 2, 3, 2), bool)
    for fn, args in [(L.roi_contrastive_loss, (roi, cap, mask, 0.1)),
                     (L.negative_caption_loss, (roi, cap, neg, mask, neg_mask, 0.1))]:
        axes = tuple(0 if isinstance(a, jax.Array) else None for a in args)
        batched = jax.vmap(fn, in_axes=axes)(*args)
        looped = [fn(*(a[i] if ax == 0 else a for a, ax in zip(args, axes))) for i in range(3)]
        np.testing.assert_allclose(batched, looped, rtol=1e-6)


def test_total_loss_weights_and_logs():
    terms = {"global": jnp.float32(2.0), "roi": jnp.float32(3.0), "distill": jnp.float32(4.0)}
    total, logs = L.total_loss(terms, {"global": 1.0, "roi": 0.5, "distill": 0.25, "neg": 1.0})
    assert float(total) == 2.0 + 1.5 + 1.0 and float(logs["total"]) == 4.5
    assert {k: float(v) for k, v in logs.items() if k != "total"} == {
        "global": 2.0, "roi": 3.0, "distill": 4.0}
    with pytest.raises(KeyError, match="roi"):
        L.total_loss(terms, {"global": 1.0, "distill": 1.0})
    grads = jax.grad(lambda x: L.total_loss({"a": x ** 2}, {"a": 3.0})[0])(2.0)
    assert float(grads) == 12.0


def test_shape_errors_are_explicit(rng):
    img, txt = f32(normed(rng, 4, 3), normed(rng, 5, 3))
    with pytest.raises(ValueError, match="same shape"):
        L.global_contrastive_loss(img, txt, 0.1)
    with pytest.raises(ValueError, match=r"pair_ids must have shape \[N\] = \(4,\)"):
        L.global_contrastive_loss(img, img, 0.1, pair_ids=jnp.zeros((5,), jnp.int32))
    roi = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="roi_mask"):
        L.roi_contrastive_loss(roi, roi, jnp.ones((2, 4), bool), 0.1)
    with pytest.raises(ValueError, match="neg must have shape"):
        L.negative_caption_loss(roi, roi, jnp.zeros((2, 3, 4)), jnp.ones((2, 3), bool),
                                jnp.ones((2, 3, 1), bool), 0.1)
    with pytest.raises(ValueError, match="backend"):
        jax.shard_map(lambda a, b: L.global_contrastive_loss(a, b, 0.1, axis_name="data",
                                                             backend="allreduce"),
                      mesh=_mesh(), in_specs=(P("data"), P("data")), out_specs=P())(
            jnp.ones((8, 2)), jnp.ones((8, 2)))


@pytest.mark.parametrize("loss", [
    functools.partial(L.global_contrastive_loss, temperature=0.1),
    functools.partial(L.sigmoid_contrastive_loss, temperature=0.1, bias=-10.0)],
    ids=["infonce", "sigmoid"])
def test_tiled_memory_is_linear_not_quadratic(loss):
    """Compiled temporaries of the tiled loss are a few [chunk, B] blocks (each InfoNCE and
    sigmoid block needs about 4 to 5), linear in the batch, where the dense loss holds the
    [B, B] logits (16 blocks here)."""
    b, e, chunk = 4096, 64, 256

    def temp_bytes(chunk_size, batch=b):
        fn = jax.value_and_grad(functools.partial(loss, chunk_size=chunk_size), argnums=(0, 1))
        x = jax.ShapeDtypeStruct((batch, e), jnp.float32)
        return jax.jit(fn).lower(x, x).compile().memory_analysis().temp_size_in_bytes

    dense, tiled = temp_bytes(None), temp_bytes(chunk)
    block = chunk * b * 4  # one [chunk, B] block of float32 logits
    assert dense >= b * b * 4, "the dense loss should hold the full logit matrix"
    assert tiled <= 6 * block, tiled / block
    assert temp_bytes(chunk, 2 * b) < 2.5 * tiled, "doubling the batch must ~double the memory"


# ------------------------------------------------------------------------------------------
# Sharded backends on 8 simulated CPU devices: dense == tiled == gather == ring.
# ------------------------------------------------------------------------------------------


def _mesh():
    assert jax.device_count() >= 8, "tests/conftest.py should simulate 8 CPU devices"
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _assert_same(reference, value, rtol=1e-5):
    for ref, got in zip(jax.tree.leaves(reference), jax.tree.leaves(value)):
        scale = float(jnp.abs(ref).max())
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


SHARDED = [("gather", None), ("gather", 5), ("ring", None)]


@pytest.mark.parametrize("backend,chunk_size", SHARDED)
@pytest.mark.parametrize("check_vma", [True, False])
def test_global_sharded_equals_dense(rng, backend, chunk_size, check_vma):
    img, txt = f32(normed(rng, 32, 16), normed(rng, 32, 16))
    tau = jnp.float32(0.07)

    def sharded(a, b, t):
        fn = functools.partial(L.global_contrastive_loss, axis_name="data", backend=backend,
                               chunk_size=chunk_size)
        return jax.shard_map(fn, mesh=_mesh(), in_specs=(P("data"), P("data"), P()),
                             out_specs=P(), check_vma=check_vma)(a, b, t)

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2))
    reference = grad(L.global_contrastive_loss)(img, txt, tau)
    tiled = grad(functools.partial(L.global_contrastive_loss, chunk_size=6))(img, txt, tau)
    _assert_same(reference, tiled)
    _assert_same(reference, jax.jit(grad(sharded))(img, txt, tau))


@pytest.mark.parametrize("backend,chunk_size", SHARDED)
@pytest.mark.parametrize("with_ids", [False, True])
def test_roi_sharded_equals_dense(rng, backend, chunk_size, with_ids):
    b, r, e = 16, 5, 8
    roi, cap = f32(normed(rng, b, r, e), normed(rng, b, r, e))
    mask = jnp.asarray(rng.random((b, r)) > 0.4)
    mask = mask.at[2:4].set(False)  # a whole device shard with no valid region
    ids = jnp.asarray(rng.integers(0, 30, (b, r))) if with_ids else None
    tau = jnp.float32(0.1)

    def dense(a, c, t):
        return L.roi_contrastive_loss(a, c, mask, t, caption_ids=ids)

    def sharded(a, c, t):
        def local(a, c, m, i, t):
            return L.roi_contrastive_loss(a, c, m, t, caption_ids=i if with_ids else None,
                                          axis_name="data", backend=backend,
                                          chunk_size=chunk_size)
        ids_or_zeros = ids if with_ids else jnp.zeros((b, r), jnp.int32)
        return jax.shard_map(local, mesh=_mesh(), in_specs=(P("data"),) * 4 + (P(),),
                             out_specs=P())(a, c, mask, ids_or_zeros, t)

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2))
    reference = grad(dense)(roi, cap, tau)
    np.testing.assert_allclose(reference[0], np_roi(np.asarray(roi, np.float64),
                                                    np.asarray(cap, np.float64),
                                                    np.asarray(mask), 0.1,
                                                    None if ids is None else np.asarray(ids)),
                               rtol=1e-5)
    tiled = grad(lambda a, c, t: L.roi_contrastive_loss(a, c, mask, t, caption_ids=ids,
                                                        chunk_size=7))(roi, cap, tau)
    _assert_same(reference, tiled)
    _assert_same(reference, jax.jit(grad(sharded))(roi, cap, tau))


@pytest.mark.parametrize("backend,chunk_size", SHARDED)
def test_sentence_image_sharded_equals_dense(rng, backend, chunk_size):
    """On 8 devices (a shard with no valid text; ids stated on other shards) the loss and its
    gradients equal the dense ones; so does tiled."""
    b, s, m, e = 16, 3, 4, 8
    img, sent = f32(normed(rng, b, e), normed(rng, b, s, e))
    ids = rng.integers(0, 12, (b, s))
    ids[rng.random((b, s)) < 0.3] = -1
    ids[4:6] = -1
    image_ids = rng.integers(-1, 12, (b, m))
    ids, image_ids = jnp.asarray(ids), jnp.asarray(image_ids)
    tau = jnp.float32(0.1)

    def sharded(a, c, t):
        local = functools.partial(L.sentence_image_loss, axis_name="data", backend=backend,
                                  chunk_size=chunk_size)
        return jax.shard_map(lambda a, c, i, j, t: local(a, c, i, j, t), mesh=_mesh(),
                             in_specs=(P("data"),) * 4 + (P(),), out_specs=P())(
            a, c, ids, image_ids, t)

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2))
    reference = grad(lambda a, c, t: L.sentence_image_loss(a, c, ids, image_ids, t))(
        img, sent, tau)
    np.testing.assert_allclose(reference[0], np_sentence(
        np.asarray(img, np.float64), np.asarray(sent, np.float64), np.asarray(ids),
        np.asarray(image_ids), 0.1), rtol=1e-5)
    tiled = grad(lambda a, c, t: L.sentence_image_loss(a, c, ids, image_ids, t, chunk_size=7))(
        img, sent, tau)
    _assert_same(reference, tiled)
    _assert_same(reference, jax.jit(grad(sharded))(img, sent, tau))


@pytest.mark.parametrize("backend,chunk_size", SHARDED)
def test_sigmoid_sharded_equals_dense(rng, backend, chunk_size):
    """The sigmoid loss on 8 devices (pairs left out and ids shared across shards) equals the
    dense loss, gradients of the embeddings, temperature and bias included; so does tiled."""
    img, txt = f32(normed(rng, 32, 16), normed(rng, 32, 16))
    keep = jnp.asarray(rng.random(32) < 0.7)
    ids = jnp.where(jnp.asarray(rng.random(32) < 0.3), -1, jnp.arange(32))
    tau, bias = jnp.float32(0.1), jnp.float32(-3.0)

    def dense(a, b, t, c, chunk=None):
        return L.sigmoid_contrastive_loss(a, b, t, c, pair_mask=keep, pair_ids=ids,
                                          chunk_size=chunk)

    def sharded(a, b, t, c):
        def local(a, b, m, i, t, c):
            return L.sigmoid_contrastive_loss(a, b, t, c, pair_mask=m, pair_ids=i,
                                              axis_name="data", backend=backend,
                                              chunk_size=chunk_size)
        return jax.shard_map(local, mesh=_mesh(), in_specs=(P("data"),) * 4 + (P(), P()),
                             out_specs=P())(a, b, keep, ids, t, c)

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2, 3))
    reference = grad(dense)(img, txt, tau, bias)
    np.testing.assert_allclose(reference[0], np_sigmoid(
        np.asarray(img, np.float64), np.asarray(txt, np.float64), 0.1, -3.0, np.asarray(ids),
        np.asarray(keep)), rtol=1e-5)
    _assert_same(reference, grad(functools.partial(dense, chunk=6))(img, txt, tau, bias))
    _assert_same(reference, jax.jit(grad(sharded))(img, txt, tau, bias))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_global_pair_mask_leaves_pairs_out_entirely(rng, chunk_size):
    img, txt = f32(normed(rng, 8, 5), normed(rng, 8, 5))
    keep = jnp.asarray([True, False, True, True, False, True, True, True])
    loss = functools.partial(L.global_contrastive_loss, chunk_size=chunk_size)
    masked, grads = jax.value_and_grad(
        lambda i, t: loss(i, t, 0.1, pair_mask=keep), argnums=(0, 1))(img, txt)
    subset, sub_grads = jax.value_and_grad(
        lambda i, t: loss(i, t, 0.1), argnums=(0, 1))(img[keep], txt[keep])
    np.testing.assert_allclose(masked, subset, rtol=1e-6)
    for full, sub in zip(grads, sub_grads):
        np.testing.assert_allclose(full[keep], sub, rtol=1e-5, atol=1e-7)
        assert not np.asarray(full[~keep]).any()  # left-out pairs get no gradient
    assert float(loss(img, txt, 0.1, pair_mask=jnp.zeros(8, bool))) == 0.0


@pytest.mark.parametrize("backend", ["gather", "ring"])
def test_global_pair_mask_and_ids_sharded_equal_dense(rng, backend):
    img, txt = f32(normed(rng, 32, 16), normed(rng, 32, 16))
    keep = jnp.asarray(rng.random(32) < 0.7)
    # One id shared by pairs on several devices' shards, the others unique.
    ids = jnp.where(jnp.asarray(rng.random(32) < 0.3), -1, jnp.arange(32))

    def sharded(a, b, m, i):
        fn = functools.partial(L.global_contrastive_loss, axis_name="data", backend=backend)
        return jax.shard_map(lambda a, b, m, i: fn(a, b, 0.07, pair_mask=m, pair_ids=i),
                             mesh=_mesh(), in_specs=(P("data"),) * 4, out_specs=P())(a, b, m, i)

    for pair_ids in (None, ids):
        reference = jax.value_and_grad(
            lambda a, b: L.global_contrastive_loss(a, b, 0.07, pair_mask=keep,
                                                   pair_ids=pair_ids), argnums=(0, 1))
        given = jnp.arange(32) if pair_ids is None else pair_ids
        _assert_same(reference(img, txt),
                     jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(img, txt, keep, given))
