"""ROC and recall@K curves against scikit-learn and by hand; the report's Markdown and PNG
figures from constructed results (no model)."""

import numpy as np
import pytest

from rmc_jax.evaluate import metrics as M
from rmc_jax.evaluate import report
from rmc_jax.evaluate import tasks

PNG = b"\x89PNG\r\n\x1a\n"


def test_roc_curve_matches_sklearn_and_auroc():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(10):
        labels = rng.random(60) > 0.5
        scores = np.round(rng.normal(size=60) + labels, 1)  # ties
        fpr, tpr = M.roc_curve(scores, labels)
        ref_fpr, ref_tpr, _ = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        assert np.trapezoid(tpr, fpr) == pytest.approx(M.auroc(scores, labels))
    fpr, tpr = M.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert len(M.roc_curve([0.1, 0.2], [1, 1])[0]) == 0


def test_recall_curve_agrees_with_recall_at_k():
    ranks = np.array([1, 3, 2, 10, 1, 7])
    ks, recall = M.recall_curve(ranks, 10)
    assert ks.tolist() == list(range(1, 11))
    by_k = M.recall_at_k(ranks, ks)
    np.testing.assert_allclose(recall, [by_k[k] for k in ks])
    assert recall[0] == pytest.approx(2 / 6) and recall[-1] == 1.0


def test_binary_zero_shot_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(2, 8))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    truth = rng.random(40) > 0.5
    images = directions[np.where(truth, 0, 1)] + 0.8 * rng.normal(size=(40, 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    known = np.ones(40, bool)
    known[:5] = False

    def embed_texts(texts):
        return np.stack([directions[0] if t.startswith("pneu") else directions[1]
                         for t in texts])

    raw = {}
    results = tasks.binary_zero_shot(images, truth, known, embed_texts, ["pneumonia"],
                                     ["normal"], 0.1, prefix="x", class_name="P", raw=raw)
    probability, kept = raw["roc"]["x"]["P"]
    margin = images[known] @ (directions[0] - directions[1])  # p is monotone in it
    assert results["x/auroc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(truth[known], margin))
    assert results["x/accuracy"] == pytest.approx(np.mean((probability > 0.5) == truth[known]))
    assert results["x/positives"] + results["x/negatives"] == 35


def _raw_and_results():
    rng = np.random.default_rng(0)
    labels = rng.random(50) > 0.5
    raw = {
        "roc": {"zeroshot": {"nodule": (rng.normal(size=50) + labels, labels),
                             "edema": (rng.normal(size=50), ~labels)},
                "rsna_pneumonia/zeroshot": {"Pneumonia": (rng.random(20), rng.random(20) > .5)}},
        "ranks": {"retrieval/image_to_report": rng.integers(1, 50, 50),
                  "retrieval/report_to_image": rng.integers(1, 50, 50),
                  "regions/caption_to_region": rng.integers(1, 80, 80),
                  "regions/caption_to_region_semantic": rng.integers(1, 20, 80)},
        "samples": {
            "image": rng.normal(size=(2, 32, 32)), "pixel_mean": 0.5, "pixel_std": 0.25,
            "boxes": np.array([[[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]],
                               [[0.2, 0.2, 0.6, 0.6], [0, 0, 1, 1]]], np.float32),
            "box_mask": np.array([[True, True], [True, False]]),
            "captions": [["small right upper lobe nodule", "left pleural effusion"],
                         ["moderate cardiomegaly", ""]],
            "content": np.array([[0, 0.25, 1, 0.75], [0, 0, 1, 1]], np.float32),
            "patch_maps": rng.normal(size=(2, 2, 4, 4))},
    }
    results = {"zeroshot/auroc_mean": 0.61, "zeroshot/auroc_mean_ci_low": 0.5,
               "zeroshot/auroc_mean_ci_high": 0.7, "lesion_retrieval/R@1": 0.25,
               "hard_negatives/accuracy/laterality": 0.9, "hard_negatives/accuracy/zone": 0.6,
               "hard_negatives_crop/accuracy/laterality": 0.55, "grounding/cnr": 0.8,
               "eval/examples": 50.0, "eval/regions": 80.0, "undefined": float("nan")}
    return raw, results


def test_report_writes_markdown_and_png_figures(tmp_path):
    raw, results = _raw_and_results()
    path = report.write_report(results, raw, str(tmp_path / "eval"), title="test run")
    text = open(path).read()
    assert text.startswith("# test run")
    assert "| `zeroshot/auroc_mean` | 0.61 [0.500, 0.700] |" in text
    assert "| `lesion_retrieval/R@1` | 0.25 |" in text
    assert "undefined" not in text  # non-finite metrics are left out
    names = ["roc_zeroshot.png", "roc_rsna_pneumonia_zeroshot.png", "recall_at_k.png",
             "grounding_examples.png", "hard_negatives.png"]
    for name in names:
        assert f"]({name})" in text
        data = (tmp_path / "eval" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name


def test_report_shows_the_single_label_confusion_matrix(tmp_path):
    raw = {"confusion": {"zeroshot": {"classes": ["nodule", "edema", "no_finding"],
                                      "counts": np.array([[1, 0, 3], [0, 0, 0], [0, 1, 5]])}}}
    text = open(report.write_report({}, raw, str(tmp_path))).read()
    assert "## Single-label zero-shot predictions: zeroshot" in text
    assert "10 images with exactly one positive class" in text
    assert "| nodule | 1 | 0 | 3 | 0.250 |" in text
    assert "| no_finding | 0 | 1 | 5 | 0.833 |" in text
    assert "\n| edema |" not in text   # no image of the class: no row (and no 0/0)


def test_report_without_raw_data_still_lists_the_metrics(tmp_path):
    path = report.write_report({"retrieval/image_to_report_R@5": 0.1}, {}, str(tmp_path))
    text = open(path).read()
    assert "| `retrieval/image_to_report_R@5` | 0.1 |" in text and ".png" not in text


def test_report_names_the_bad_examples_and_says_why_a_task_is_absent(tmp_path):
    results = {"eval/examples": 15.0, "eval/skipped": 1.0, "eval/regions": 0.0,
               "retrieval/examples": 0.0, "retrieval/left_out_no_report": 15.0,
               "ms_cxr/skipped": 2.0}
    raw = {"skipped": {"eval": ["mimic_cxr[3]: ImageDecodeError: cannot decode /d/3.jpg"],
                       "ms_cxr": ["ms_cxr[0]: OSError: /m/0.jpg", "ms_cxr[1]: OSError: /m/1.jpg"]},
           "notes": ["`retrieval`: not computed: 0 of the 15 examples have report text"]}
    text = open(report.write_report(results, raw, str(tmp_path))).read()
    assert "**1 bad example(s) left out of `eval`**" in text
    assert "- `mimic_cxr[3]: ImageDecodeError: cannot decode /d/3.jpg`" in text
    assert "**2 bad example(s) left out of `ms_cxr`**" in text and "`ms_cxr[1]: OSError" in text
    assert "## Notes\n\n- `retrieval`: not computed: 0 of the 15 examples have report " \
           "text" in text
    assert "| `eval/skipped` | 1 |" in text
