"""Phrase-grounding metrics (CNR, mIoU, pointing) on hand-computed maps, checked against
direct NumPy / scikit-learn computations; upsampling against jax.image.resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmc_jax.evaluate import grounding as G

SQRT3 = np.sqrt(3.0)


def test_upsample_matches_jax_image_resize():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 4, 5))
    ours = G.upsample(maps, (16, 20))
    reference = jax.image.resize(jnp.asarray(maps, jnp.float32), (3, 16, 20), "bilinear")
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-5)
    # By hand: [0, 1] along x -> 4 pixels at source coordinates -0.25, 0.25, 0.75, 1.25 (clamped).
    np.testing.assert_allclose(G.upsample(np.array([[0.0, 1.0]]), (1, 4)),
                               [[0.0, 0.25, 0.75, 1.0]])


def test_box_masks_use_pixel_centres_and_never_come_out_empty():
    masks = G.box_masks(np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.5, 0.5, 1.0],
                                  [0.30, 0.30, 0.32, 0.32]]), (4, 4))
    assert masks[0].astype(int).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0],
                                             [0, 0, 0, 0]]
    assert masks[1].astype(int).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0],
                                             [1, 1, 0, 0]]
    assert masks[2].sum() == 1 and masks[2][1, 1]  # tiny box: the pixel holding its centre


def _checkerboard(values_a, values_b, shape):
    out = np.empty(shape)
    out.flat[0::2], out.flat[1::2] = values_a, values_b
    return out


def test_binary_map_is_perfect():
    inside = np.zeros((1, 8, 8), bool)
    inside[0, 2:5, 1:4] = True
    scores = G.grounding_scores(inside.astype(float), inside)
    assert scores["pointing"][0] == 1 and scores["miou"][0] == 1
    assert scores["miou_rescaled"][0] == 1
    assert scores["cnr"][0] == pytest.approx(1e6)  # |1 - 0| / the clamped std 1e-6


def test_cnr_iou_pointing_by_hand():
    # 4 x 4 map; the box is the top-left 2 x 2 block: values 1, 3, 1, 3 (mean 2, variance 1).
    # Outside: +-sqrt(3) alternating (mean 0, variance 3). CNR = |2 - 0| / sqrt(1 + 3) = 1.
    inside = np.zeros((4, 4), bool)
    inside[:2, :2] = True
    maps = np.zeros((4, 4))
    maps[inside] = [1, 3, 1, 3]
    maps[~inside] = _checkerboard(SQRT3, -SQRT3, (12,))
    scores = G.grounding_scores(maps[None], inside[None])
    assert scores["cnr"][0] == pytest.approx(1.0)
    # Every threshold 0.1..0.5 keeps the 4 box pixels and the 6 outside +sqrt(3): IoU 4/10.
    assert scores["miou"][0] == pytest.approx(0.4)
    assert scores["miou_rescaled"][0] == pytest.approx(0.4)
    assert scores["pointing"][0] == 1.0  # the maximum 3 is inside
    # Only the content counts: without the -sqrt(3) pixels the outside is constant sqrt(3).
    content = maps != -SQRT3
    scores = G.grounding_scores(maps[None], inside[None], content[None])
    assert scores["cnr"][0] == pytest.approx((2 - SQRT3) / 1.0)
    # A map whose maximum lies outside fails the pointing game; a box covering everything
    # leaves CNR undefined.
    moved = maps.copy()
    moved[3, 3] = 10.0
    assert G.grounding_scores(moved[None], inside[None])["pointing"][0] == 0.0
    assert np.isnan(G.grounding_scores(maps[None], np.ones((1, 4, 4), bool))["cnr"][0])


def test_scores_match_direct_numpy_and_sklearn_on_random_maps():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    maps = rng.uniform(-0.2, 0.7, size=(6, 12, 12))
    boxes = np.sort(rng.uniform(0, 1, size=(6, 2, 2)), axis=1).transpose(0, 2, 1).reshape(6, 4)
    boxes = boxes[:, [0, 2, 1, 3]]  # (x0, y0, x1, y1) from sorted pairs
    inside = G.box_masks(boxes, (12, 12))
    scores = G.grounding_scores(maps, inside)
    for i in range(6):
        a, b = maps[i][inside[i]], maps[i][~inside[i]]
        assert scores["cnr"][i] == pytest.approx(abs(a.mean() - b.mean()) /
                                                 np.sqrt(a.var() + b.var()))
        ious = [sklearn_metrics.jaccard_score(inside[i].ravel(), (maps[i] > t).ravel())
                for t in G.BIOVIL_THRESHOLDS]
        assert scores["miou"][i] == pytest.approx(np.mean(ious))
        assert scores["pointing"][i] == inside[i].ravel()[maps[i].argmax()]


def _wide_example_with_black_borders():
    """A 20 x 40 radiograph whose top and bottom 3 rows are black (as collimated films are),
    one box in its upper half, through the evaluation pipeline at 16 px: the image fills rows
    4-12 of the square, rows 0-3 and 12-15 are letterbox padding."""
    from rmc_jax.data import pipeline as pipe
    from rmc_jax.data.schema import Example
    from rmc_jax.data.tokenizer import train_wordpiece

    image = np.full((20, 40), 120, np.uint8)
    image[:3] = image[-3:] = 0
    example = Example(example_id="wide", image=image, report="Findings: nodule.",
                      labels=np.zeros(1, np.float32), label_mask=np.ones(1, bool),
                      boxes=np.array([[0.25, 0.0, 0.5, 0.5]], np.float32),
                      captions=("right upper zone nodule",), finding_ids=np.zeros(1, np.int32),
                      source="test")
    tokenizer = train_wordpiece(["right upper zone nodule findings"] * 3, 50, max_len=8)
    config = pipe.PipelineConfig(image_size=16, max_regions=1, num_negatives=1, max_text_len=8,
                                 max_caption_len=8, augment=False)
    return pipe.prepare_example(example, config, tokenizer, tokenizer, None)


def test_grounding_covers_the_image_not_the_letterbox_padding():
    prepared = _wide_example_with_black_borders()
    # The content box is the letterbox geometry, black image rows included.
    np.testing.assert_allclose(prepared["content"], [0, 0.25, 1, 0.75])
    np.testing.assert_allclose(prepared["boxes"][0], [0.25, 0.25, 0.5, 0.5])
    # A map whose maximum lies in the padding above the image, a lesser peak on the box.
    size = 16
    maps = np.zeros((size, size))
    maps[:4] = 0.9                       # padding rows: the global maximum
    maps[4:8, 4:8] = 0.6                 # the box (rows 4-7, columns 4-7)
    maps[8:12] = 0.2
    data = {"patch_maps": maps[None, None], "boxes": prepared["boxes"][None],
            "box_mask": prepared["box_mask"][None],
            "caption_hash": prepared["caption_hash"][None],
            "content": prepared["content"][None]}
    # phrase_grounding upsamples the patch map; at the input size the upsampling is exact.
    results = G.phrase_grounding(data, size)
    assert results["grounding/pointing_accuracy"] == 1.0
    content = np.zeros((size, size), bool)
    content[4:12] = True
    inside = np.zeros((size, size), bool)
    inside[4:8, 4:8] = True
    outside = content & ~inside
    cnr = abs(maps[inside].mean() - maps[outside].mean()) / np.sqrt(
        maps[inside].var() + maps[outside].var())
    assert results["grounding/cnr"] == pytest.approx(cnr)
    # Thresholds 0.1-0.5 on the content: the map's 0.2 band joins the box only below 0.2.
    ious = [(((maps > t) & content) & inside).sum() / (((maps > t) & content) | inside).sum()
            for t in G.BIOVIL_THRESHOLDS]
    assert results["grounding/miou"] == pytest.approx(np.mean(ious))
    # Counting the padding, its 0.9 rows would take the maximum: pointing would be a miss.
    everywhere = G.grounding_scores(maps[None], inside[None])
    assert everywhere["pointing"][0] == 0.0
    assert G.peaks(maps[None], content[None])[0] == 4 * size + 4


def test_phrase_grounding_groups_boxes_of_one_caption():
    rng = np.random.default_rng(0)
    n, r, h = 2, 3, 4
    patches = rng.normal(size=(n, h, h, 8))
    patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
    captions = rng.normal(size=(n, r, 8))
    captions /= np.linalg.norm(captions, axis=-1, keepdims=True)
    maps = G.similarity_maps(patches, captions)
    assert maps.shape == (n, r, h, h)
    assert maps[1, 2, 3, 0] == pytest.approx(patches[1, 3, 0] @ captions[1, 2])
    # Image 0: slots 0 and 1 share a caption (one phrase, two boxes); slot 2 is padding.
    # Its map is 1 on the grid cells of both boxes and 0 elsewhere.
    patch_maps = np.zeros((n, r, h, h))
    patch_maps[0, 0, 0, 0] = patch_maps[0, 0, 3, 3] = 1.0
    patch_maps[1, 0, 1:3, 1:3] = 1.0
    data = {
        "patch_maps": patch_maps,
        "boxes": np.array([[[0, 0, 0.25, 0.25], [0.75, 0.75, 1, 1], [0, 0, 1, 1]],
                           [[0.25, 0.25, 0.75, 0.75], [0, 0, 1, 1], [0, 0, 1, 1]]], np.float32),
        "box_mask": np.array([[1, 1, 0], [1, 0, 0]], bool),
        "caption_hash": np.array([[7, 7, -1], [9, -1, -1]]),
        "content": np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1)),
    }
    raw = {}
    results = G.phrase_grounding(data, 16, raw=raw)
    assert results["grounding/phrases"] == 2
    assert [slots for _, slots in raw["grounding"]["grounding"]["phrases"]] == [[0, 1], [0]]
    assert results["grounding/pointing_accuracy"] == 1.0
    assert results["grounding/cnr"] > 1.0 and 0 < results["grounding/miou"] <= 1
