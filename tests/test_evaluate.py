"""Evaluation metrics against scikit-learn and hand-computed cases; tasks on constructed
embeddings whose answers are known."""

import numpy as np
import pytest

from rmc_jax.data.captions import PERTURBATION_TYPES
from rmc_jax.evaluate import load_prompts, metrics as M, tasks, write_results


def test_auroc_matches_sklearn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.random(50) > 0.6
        scores = np.round(rng.normal(size=50) + labels, 1)  # rounding creates ties
        assert M.auroc(scores, labels) == pytest.approx(
            sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert M.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(M.auroc([0.1, 0.2], [1, 1]))


def test_auroc_equals_the_former_tie_loop():
    """Parity with the per-tie-group loop that ``scipy.stats.rankdata`` replaced (kept in
    tools/bench_auroc.py, which also measures the speed-up)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "bench_auroc.py")
    spec = importlib.util.spec_from_file_location("bench_auroc", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(1)
    for size in (2, 3, 17, 500, 20000):
        for kind in ("continuous", "tied"):
            scores, labels = bench.example(size, kind, seed=size)
            labels[:2] = [True, False]  # both classes present
            assert abs(M.auroc(scores, labels) - bench.reference_auroc(scores, labels)) <= 1e-12
    constant = np.zeros(40)  # every score tied: 0.5
    labels = rng.random(40) < 0.5
    assert M.auroc(constant, labels) == bench.reference_auroc(constant, labels) == 0.5
    assert np.isnan(M.auroc([0.1, np.nan, 0.3], [1, 0, 1]))  # a NaN score has no rank


def test_ranks_and_recall_by_hand():
    similarity = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.5, 0.5, 0.4]])
    positive = np.eye(3, dtype=bool)
    ranks = M.ranks_of_positives(similarity, positive)
    assert ranks.tolist() == [1, 2, 3]  # row 2: a tie with a negative counts against it
    assert M.recall_at_k(ranks, (1, 2)) == {1: 1 / 3, 2: 2 / 3}
    two_positives = positive | np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]], bool)
    assert M.ranks_of_positives(similarity, two_positives)[1] == 1


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    values = rng.normal(loc=3.0, size=400)
    low, high = M.bootstrap_ci(np.mean, values, n=300)
    assert low < values.mean() < high and high - low < 0.5


def _normal(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_separates_classes_when_images_align_with_prompts():
    rng = np.random.default_rng(0)
    names = ("nodule", "pleural_effusion", "no_finding")
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 10, np.float32)
    directions = _normal(rng.normal(size=(3, 16)))
    images = _normal(labels @ directions + 0.05 * rng.normal(size=(40, 16)))
    prompt_dirs = {}

    def embed_texts(texts):
        out = []
        for text in texts:
            key = next((i for i, n in enumerate(names[:2]) if n.replace("_", " ") in text), 2)
            negated = text.startswith("no ") or text.startswith("there is no")
            out.append(-directions[key] if negated and key < 2 else directions[key])
            prompt_dirs[text] = key
        return _normal(np.array(out) + 0.01 * rng.normal(size=(len(out), 16)))

    raw = {}
    results = tasks.zero_shot(images, labels, np.ones_like(labels, bool), names, embed_texts,
                              prompts=tasks.template_prompts(names), bootstrap=50, raw=raw)
    assert results["zeroshot/auroc/nodule"] == 1.0
    assert results["zeroshot/auroc/pleural_effusion"] == 1.0
    assert results["zeroshot/auroc_mean"] > 0.95 and results["zeroshot/auroc_mean_ensemble"] > 0.9
    assert results["zeroshot/auroc_mean_ci_low"] <= results["zeroshot/auroc_mean"] <= \
        results["zeroshot/auroc_mean_ci_high"]
    assert results["zeroshot/classes"] == 3 and results["zeroshot/classes_skipped"] == 0
    assert "notes" not in raw
    # The headline's per-class scores are p(positive) of the pos/neg pair; the accuracy is their
    # argmax over classes on single-label images (here the 30 with one positive class).
    probability = np.stack([raw["roc"]["zeroshot"][n][0] for n in names], 1)
    assert np.all((probability >= 0) & (probability <= 1))
    single = labels.sum(1) == 1
    assert results["zeroshot/accuracy_single_label"] == pytest.approx(
        np.mean(probability[single].argmax(1) == labels[single].argmax(1)))
    # Split by what the image shows: its one positive class is 'no_finding' or a finding.
    correct = probability[single].argmax(1) == labels[single].argmax(1)
    normal = labels[single][:, names.index("no_finding")] > 0
    assert 0 < normal.sum() < single.sum()
    assert results["zeroshot/accuracy_single_label_normal"] == pytest.approx(
        np.mean(correct[normal]))
    assert results["zeroshot/accuracy_single_label_findings"] == pytest.approx(
        np.mean(correct[~normal]))
    # The confusion matrix behind the accuracy: (true, predicted) pairs counted one by one.
    confusion = raw["confusion"]["zeroshot"]
    assert confusion["classes"] == list(names)
    expected = np.zeros((3, 3), int)
    for true, predicted in zip(labels[single].argmax(1), probability[single].argmax(1)):
        expected[true, predicted] += 1
    np.testing.assert_array_equal(confusion["counts"], expected)
    assert np.trace(expected) / expected.sum() == pytest.approx(
        results["zeroshot/accuracy_single_label"])
    # Once there is a finding, it is named right; the two findings vary apart.
    assert results["zeroshot/accuracy_which_finding"] == 1.0
    assert results["zeroshot/margin_first_component"] < 0.9
    # 'No Finding' has its own prompts: never the inverted "no {}" template.
    assert not any(p.startswith("no no finding") for p in prompt_dirs)
    assert tasks.default_prompts(names)["no_finding"]["positive"][0] == \
        "no acute cardiopulmonary process"
    # What each class was scored with is kept for eval/prompts.json.
    assert raw["prompts"]["zeroshot"] == tasks.template_prompts(names)


@pytest.mark.parametrize("spelling", ["No Finding", "No finding", "no-finding", "NO_FINDING"])
def test_no_finding_is_the_normal_class_in_any_spelling(spelling):
    """Evaluation decides which class is 'No Finding' as training does (schema.is_no_finding):
    a dataset spelling it 'No finding' gets the normal prompts, not the templates (whose
    "no {}" would invert it), and its images count as normal in the accuracy split."""
    names = ("nodule", "pleural_effusion", spelling)
    prompts = tasks.default_prompts(names)[spelling]
    assert prompts == {"positive": list(tasks.NORMAL_PROMPTS),
                       "negative": ["nodule", "pleural effusion"]}
    rng = np.random.default_rng(0)
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]] * 5, np.float32)
    images = _normal(rng.normal(size=(20, 8)))
    table = {}

    def embed_texts(texts):
        return np.stack([table.setdefault(t, _normal(rng.normal(size=8))) for t in texts])

    results = tasks.zero_shot(images, labels, np.ones_like(labels, bool), names, embed_texts,
                              bootstrap=0)
    reference = tasks.zero_shot(images, labels, np.ones_like(labels, bool),
                                names[:2] + ("no_finding",), embed_texts, bootstrap=0)
    for key in ("auroc_mean", "accuracy_single_label", "accuracy_single_label_normal",
                "accuracy_single_label_findings", "accuracy_which_finding"):
        assert results[f"zeroshot/{key}"] == reference[f"zeroshot/{key}"], key


def test_default_prompts_word_known_findings_as_reports_do_and_template_the_rest():
    """A class REPORT_PHRASES words gets its phrasings whatever the dataset's spelling
    ('Pleural Effusion', 'pleural_effusion'); any other class the templates; 'No Finding' its
    normal-study prompts with every finding as a negative."""
    names = ("Pleural Effusion", "Cardiomegaly", "Lung Opacity", "No Finding")
    prompts = tasks.default_prompts(names)
    assert "the costophrenic angles are sharp" in prompts["Pleural Effusion"]["negative"]
    assert tasks.default_prompts(["pleural_effusion"])["pleural_effusion"] == \
        prompts["Pleural Effusion"]
    assert prompts["Cardiomegaly"] == {"positive": list(tasks.REPORT_PHRASES["cardiomegaly"][0]),
                                       "negative": list(tasks.REPORT_PHRASES["cardiomegaly"][1])}
    templates = tasks.template_prompts(names)
    assert prompts["Lung Opacity"] == templates["Lung Opacity"] == {
        "positive": ["lung opacity", "there is lung opacity",
                     "findings consistent with lung opacity", "lung opacity is present"],
        "negative": ["no lung opacity", "there is no lung opacity",
                     "no evidence of lung opacity"]}
    assert prompts["No Finding"] == templates["No Finding"] == {
        "positive": list(tasks.NORMAL_PROMPTS),
        "negative": ["pleural effusion", "cardiomegaly", "lung opacity"]}
    for name in names:   # a prompt on both sides would cancel itself
        assert not set(prompts[name]["positive"]) & set(prompts[name]["negative"]), name


def test_single_label_accuracy_split_shows_a_classifier_that_calls_every_image_normal():
    """Every image embedded as 'normal': the headline accuracy is the normal share of the
    single-label images, the split says 1.0 on normal images and 0.0 on the abnormal ones."""
    rng = np.random.default_rng(2)
    names = ("nodule", "pleural_effusion", "no_finding")
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]] * 5, np.float32)
    directions = _normal(rng.normal(size=(3, 16)))
    images = _normal(np.tile(directions[2], (len(labels), 1)) + 0.01 * rng.normal(size=(20, 16)))

    def embed_texts(texts):
        keys = [next((i for i, n in enumerate(names[:2]) if n.replace("_", " ") in t), 2)
                for t in texts]
        negated = [t.startswith("no ") or t.startswith("there is no") for t in texts]
        return np.stack([-directions[k] if n and k < 2 else directions[k]
                         for k, n in zip(keys, negated)])

    raw = {}
    results = tasks.zero_shot(images, labels, np.ones_like(labels, bool), names, embed_texts,
                              prompts=tasks.template_prompts(names), bootstrap=0, raw=raw)
    assert results["zeroshot/accuracy_single_label"] == pytest.approx(0.5)
    # Every image lands in the 'no_finding' column: 5 nodules, 5 effusions, 10 normal images.
    np.testing.assert_array_equal(raw["confusion"]["zeroshot"]["counts"],
                                  [[0, 0, 5], [0, 0, 5], [0, 0, 10]])
    assert results["zeroshot/accuracy_single_label_normal"] == 1.0
    assert results["zeroshot/accuracy_single_label_findings"] == 0.0
    assert tasks.single_label_accuracy(np.eye(3)[[2, 2, 2]], np.eye(3), np.ones((3, 3), bool),
                                       among=[True, True, False]) == 0.0


def test_zero_shot_shows_a_classifier_that_only_tells_abnormal_from_normal():
    """Every abnormal image embedded alike, both findings' prompts on one abnormal-normal axis:
    normal and abnormal are told apart, but the finding named is always the one whose prompts
    load more on the axis; the margins' first principal component holds all their variance."""
    rng = np.random.default_rng(3)
    names = ("nodule", "pleural_effusion", "no_finding")
    labels = np.array([[1, 0, 0]] * 5 + [[0, 1, 0]] * 5 + [[0, 0, 1]] * 10, np.float32)
    abnormal, normal = np.eye(16)[0], np.eye(16)[1]
    images = _normal(np.where(labels[:, 2:] > 0, normal, abnormal)
                     + 0.001 * rng.normal(size=(20, 16)))

    def embed_texts(texts):
        out = []
        for text in texts:
            if text.startswith("no ") or text.startswith("there is no") or text in \
                    tasks.NORMAL_PROMPTS:
                out.append(normal)
            else:   # nodule prompts lie on the abnormal direction, effusion ones nearer normal
                out.append(abnormal if "nodule" in text else _normal(0.6 * abnormal
                                                                     + 0.4 * normal))
        return np.stack(out)

    raw = {}
    results = tasks.zero_shot(images, labels, np.ones_like(labels, bool), names, embed_texts,
                              prompts=tasks.template_prompts(names), bootstrap=0, raw=raw)
    assert results["zeroshot/accuracy_single_label_normal"] == 1.0
    assert results["zeroshot/accuracy_which_finding"] == 0.5    # every finding 'nodule'
    assert results["zeroshot/accuracy_single_label_findings"] == 0.5
    np.testing.assert_array_equal(raw["confusion"]["zeroshot"]["counts"],
                                  [[5, 0, 0], [5, 0, 0], [0, 0, 10]])
    assert results["zeroshot/margin_first_component"] > 0.999


def test_first_component_share_matches_scikit_learn_pca():
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(4)
    margins = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    assert tasks.first_component_share(margins) == pytest.approx(
        decomposition.PCA().fit(margins).explained_variance_ratio_[0], rel=1e-9)
    axis = rng.normal(size=(200, 1)) * rng.normal(size=(1, 6))   # one axis: rank 1
    assert tasks.first_component_share(axis) == pytest.approx(1.0)
    assert tasks.first_component_share(np.eye(4) * 3) == pytest.approx(1 / 3)  # 4 points, 3 dims
    assert tasks.first_component_share(np.ones((5, 3))) is None      # no variance
    assert tasks.first_component_share(np.ones((1, 3))) is None


def test_zero_shot_needs_negatives_where_positive_prompts_alone_fail():
    """Images of a finding sit near the *negated* finding (what reports mostly say): a positive
    prompt alone ranks them wrongly, the positive/negative pair recovers them."""
    rng = np.random.default_rng(3)
    names = ("edema", "nodule")
    labels = (rng.random((60, 2)) > 0.5).astype(np.float32)
    axes = _normal(rng.normal(size=(3, 8)))      # normal study, edema, nodule
    images = _normal(axes[0] + labels @ axes[1:] + 0.05 * rng.normal(size=(60, 8)))

    def embed_texts(texts):  # "edema" and "no edema" both sit near normal studies
        out = []
        for text in texts:
            direction = axes[1] if "edema" in text else axes[2]
            negated = text.startswith(("no ", "there is no"))
            out.append(axes[0] + (-0.2 if negated else 0.2) * direction)
        return _normal(np.array(out))

    results = tasks.zero_shot(images, labels, np.ones_like(labels, bool), names, embed_texts,
                              prompts=tasks.template_prompts(names), bootstrap=0)
    assert results["zeroshot/auroc_mean_ensemble"] < 0.5 < 0.9 < results["zeroshot/auroc_mean"]


def test_zero_shot_on_positive_only_labels_skips_with_a_reason(tmp_path):
    """MS-CXR-like label sets mark only present findings: no class has a negative example, so
    there is no AUROC, no warning, no empty ROC figure, and report.md says why."""
    import warnings

    from rmc_jax.evaluate import report

    rng = np.random.default_rng(0)
    names = ("nodule", "pneumothorax", "edema")
    labels = np.zeros((12, 3), np.float32)
    labels[:8, 0] = labels[8:, 1] = 1
    known = labels > 0                      # only positives are known; edema never appears
    images = _normal(rng.normal(size=(12, 8)))

    def embed_texts(texts):
        return _normal(rng.normal(size=(len(texts), 8)))

    raw = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = tasks.zero_shot(images, labels, known, names, embed_texts, raw=raw)
        path = report.write_report(results, raw, str(tmp_path))
    assert not any(k.startswith(("zeroshot/auroc", "zeroshot/accuracy")) for k in results)
    assert results["zeroshot/classes"] == 0 and results["zeroshot/classes_skipped"] == 3
    assert "roc" not in raw and not list(tmp_path.glob("roc_*.png"))
    text = open(path).read()
    assert "## Notes" in text and ("no AUROC for 3 of 3 classes (an AUROC needs a known "
                                   "positive and a known negative example): nodule (no negative "
                                   "example), pneumothorax (no negative example), edema (no "
                                   "known label)") in text
    # One class with both kinds of example: scored, the others still named.
    known[:2, 1] = True
    raw = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = tasks.zero_shot(images, labels, known, names, embed_texts, raw=raw)
    assert set(raw["roc"]["zeroshot"]) == {"pneumothorax"}
    assert results["zeroshot/auroc_mean"] == results["zeroshot/auroc/pneumothorax"]
    assert results["zeroshot/classes_skipped"] == 2


def _region_data(n=6, r=2, e=8, k=5, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    captions = _normal(rng.normal(size=(n, r, e)))
    regions = _normal(captions + noise * rng.normal(size=(n, r, e)))
    negatives = _normal(rng.normal(size=(n, r, k, e)))
    return {
        "regions": regions, "captions": captions, "negatives": negatives,
        "box_mask": np.ones((n, r), bool), "caption_hash": np.arange(n * r).reshape(n, r),
        "finding_ids": np.arange(n * r).reshape(n, r) % 3, "side_ids": np.zeros((n, r), int),
        "zone_ids": np.zeros((n, r), int), "size_ids": np.full((n, r), -1),
        "neg_valid": np.ones((n, r, k), bool),
        "neg_kind": np.broadcast_to(np.arange(k) % len(PERTURBATION_TYPES), (n, r, k)).copy(),
    }


def test_region_matching_perfect_and_semantic():
    data = _region_data()
    results = tasks.region_matching(data)
    assert results["regions/region_to_caption_R@1"] == 1.0
    assert results["regions/caption_to_region_R@1"] == 1.0
    # Swap two regions' embeddings: exact matching fails for them, semantic matching still
    # succeeds where the swapped regions share finding/side/zone.
    data["regions"][0, 0], data["regions"][1, 1] = (data["captions"][1, 1].copy(),
                                                    data["captions"][0, 0].copy())
    results = tasks.region_matching(data)
    assert results["regions/region_to_caption_R@1"] == pytest.approx(10 / 12)
    assert results["regions/region_to_caption_semantic_R@1"] == 1.0  # findings 0 and 0 (ids 0, 3)


def test_masked_regions_are_not_evaluated():
    data = _region_data()
    data["regions"][2, 1] = -data["captions"][2, 1]  # a garbage embedding...
    data["box_mask"][2, 1] = False                   # ...on a padded region
    assert tasks.region_matching(data)["regions/region_to_caption_R@1"] == 1.0


def test_hard_negative_accuracy_by_kind():
    data = _region_data(n=2, r=1, k=5)
    data["negatives"][:, :, 0] = data["captions"][:, :, None][:, :, 0] * -1  # laterality: easy
    data["negatives"][:, :, 1] = data["captions"][:, :, None][:, :, 0]  # zone: identical text
    results = tasks.hard_negative_accuracy(data)
    assert results["hard_negatives/accuracy/laterality"] == 1.0
    assert results["hard_negatives/accuracy/zone"] == 0.0  # a tie is not a success


def test_image_report_retrieval_with_shared_reports():
    rng = np.random.default_rng(0)
    reports = _normal(rng.normal(size=(4, 8)))
    images = reports.copy()
    keys = np.array([1, 2, 3, 3], np.uint64)  # images 2 and 3 share one report text
    images[3] = reports[2]                    # so matching image 3 to report 2 is correct
    results = tasks.image_report_retrieval(images, reports, keys)
    assert results["retrieval/image_to_report_R@1"] == 1.0
    assert results["retrieval/report_to_image_median_rank"] == 1.0


def test_retrieval_leaves_out_examples_without_a_report():
    rng = np.random.default_rng(1)
    reports = _normal(rng.normal(size=(5, 8)))
    images = reports.copy()
    keys = np.array([1, 2, 9, 9, 9], np.uint64)  # examples 2-4: the same (empty) report
    has_report = np.array([True, True, False, False, False])
    images[1] = reports[0]  # image 1 matches report 0 best: a miss
    raw = {}
    results = tasks.image_report_retrieval(images, reports, keys, has_report=has_report,
                                           raw=raw)
    assert results["retrieval/examples"] == 2 and results["retrieval/left_out_no_report"] == 3
    # Ranked among the 2 examples with a report only: the empty ones neither score as hits
    # ("sharing" the empty report) nor crowd the candidates.
    assert len(raw["ranks"]["retrieval/image_to_report"]) == 2
    assert results["retrieval/image_to_report_R@1"] == 0.5
    assert "notes" not in raw


def test_no_retrieval_numbers_without_reports():
    rng = np.random.default_rng(2)
    emb = _normal(rng.normal(size=(4, 8)))
    raw = {}
    results = tasks.image_report_retrieval(emb, emb, np.zeros(4, np.uint64),
                                           has_report=np.zeros(4, bool), prefix="x/retrieval",
                                           raw=raw)
    # Every empty report "shares" the same text: scored, that would be R@1 = 1.000.
    assert results == {"x/retrieval/examples": 0.0, "x/retrieval/left_out_no_report": 4.0}
    assert raw["notes"] == ["`x/retrieval`: not computed: 0 of the 4 examples have report "
                            "text (image-report retrieval ranks at least 2)"]
    one = tasks.image_report_retrieval(emb, emb, np.arange(4, dtype=np.uint64),
                                       has_report=np.array([1, 0, 0, 0], bool))
    assert set(one) == {"retrieval/examples", "retrieval/left_out_no_report"}


def test_results_json_is_flat_and_finite(tmp_path):
    path = write_results({"a/b": 0.5, "c": float("nan"), "d": 2}, str(tmp_path))
    import json
    assert json.load(open(path)) == {"a/b": 0.5, "d": 2.0}


def test_user_prompt_file(tmp_path):
    good = tmp_path / "prompts.json"
    good.write_text('{"nodule": ["a small nodule", "pulmonary nodule"]}')
    assert load_prompts(str(good))["nodule"][1] == "pulmonary nodule"
    bad = tmp_path / "bad.json"
    bad.write_text('["nodule"]')
    with pytest.raises(ValueError, match="mapping each class"):
        load_prompts(str(bad))


@pytest.mark.parametrize("name, prompts_of", [
    ("prompts_report_phrased.json", tasks.default_prompts),
    ("prompts_templates.json", tasks.template_prompts)])
def test_experiments_prompt_files_are_the_prompt_sets_they_name(name, prompts_of):
    """The prompt files in experiments/ (README): the report-phrased set evaluated in
    prompts_report_phrased.md is today's default for the embedded data's classes, the
    template set the default before it (what earlier results scored, reproducible with
    --config.evals.prompts=). The order of a side's prompts does not matter: they are averaged."""
    import os

    from rmc_jax.data.synthetic.source import LABEL_NAMES

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", name)
    saved, expected = load_prompts(path), prompts_of(LABEL_NAMES)
    assert set(saved) == set(expected) == set(LABEL_NAMES)
    for label in LABEL_NAMES:
        for side in ("positive", "negative"):
            assert sorted(saved[label][side]) == sorted(expected[label][side]), (label, side)
