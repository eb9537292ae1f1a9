"""experiments/ceiling.py: the labelled image tower's metrics, loss, and one tiny run."""

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import ceiling  # noqa: E402

from configs import base  # noqa: E402


def test_label_metrics_match_sklearn_and_skip_classes_without_both_outcomes():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n = 200
    labels = (rng.random((n, 3)) < [0.3, 0.5, 0.0]).astype(np.float32)   # class 2: no positive
    scores = labels * 0.8 + rng.normal(size=(n, 3))
    mask = rng.random((n, 3)) > 0.1                                      # some labels unknown
    got = ceiling.label_metrics(scores, labels, mask, ["a", "b", "c"])
    expected = [metrics.roc_auc_score(labels[mask[:, c], c], scores[mask[:, c], c])
                for c in (0, 1)]
    assert got["auroc/a"] == pytest.approx(expected[0], abs=1e-12)
    assert got["auroc/b"] == pytest.approx(expected[1], abs=1e-12)
    assert "auroc/c" not in got
    assert got["auroc_mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    single = mask.all(1) & (labels.sum(1) == 1)
    assert got["single_label_examples"] == single.sum() > 0
    assert got["accuracy_single_label"] == pytest.approx(
        np.mean(scores[single].argmax(1) == labels[single].argmax(1)))


def test_masked_bce_is_the_mean_over_known_labels():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    mask = np.array([[True, False, True], [True, True, False]])
    bce = np.log1p(np.exp(-logits)) * labels + np.log1p(np.exp(logits)) * (1 - labels)
    assert float(ceiling.masked_bce(logits, labels, mask)) == pytest.approx(bce[mask].mean(),
                                                                            rel=1e-6)


def test_run_trains_the_image_tower_and_scores_the_test_split(tmp_path):
    results = ceiling.run(base.get_config("smoke,steps=3"), str(tmp_path))
    assert results["steps"] == 3 and results["test_examples"] == 16
    assert 0.0 <= results["auroc_mean"] <= 1.0 and np.isfinite(results["final_loss"])
    assert os.path.exists(tmp_path / "tokenizer.json")   # kept for the next budget


def test_probe_keeps_the_runs_image_tower_frozen_and_trains_only_the_head(tmp_path):
    """--probe: a finished run's image tower, restored from its checkpoint, is bit-identical
    after the probe's steps; the head has trained; a tower of another shape is refused."""
    from rmc_jax import train

    config = base.get_config("smoke,steps=3")
    config.update(checkpoint_every=3)
    config.evals.enabled = False
    train.train(config, str(tmp_path / "run"))
    tower = ceiling.run_image_tower(str(tmp_path / "run"))
    before = jax.tree.map(np.array, tower)
    out = {}
    results = ceiling.run(config, str(tmp_path / "probe"), tower, out)
    assert 0.0 <= results["auroc_mean"] <= 1.0 and results["steps"] == 3
    after = out["params"]
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)),
                                     before, after["image_encoder"]))
    classifier = ceiling.LabelClassifier(ceiling.model_config(config.model.to_dict()).vision,
                                         after["head"]["kernel"].shape[-1])
    size = config.data.image_size
    initial = classifier.init(jax.random.key(config.seed), np.zeros((1, size, size, 1)))
    assert not np.allclose(after["head"]["kernel"], initial["params"]["head"]["kernel"])
    wider = base.get_config("smoke,steps=3")
    wider.model.vision.width = 48
    with pytest.raises(SystemExit, match="differs from this configuration"):
        ceiling.run(wider, str(tmp_path / "probe"), tower)
    with pytest.raises(SystemExit, match="no checkpoint"):
        ceiling.run_image_tower(str(tmp_path / "empty"))


def test_expected_recall_is_the_mean_over_every_tie_order_of_the_evaluations_ranking():
    import itertools

    from rmc_jax.evaluate import metrics as M

    content = ["normal", "normal", "normal", "effusion", "effusion", "nodule"]
    report_key = [1, 2, 2, 3, 4, 5]       # reports 1 and 2 share a text: positives of each other
    n, ks = len(content), (1, 2, 5)
    same_content = np.array([[a == b for b in content] for a in content], float)
    positive = np.array([[a == b for b in report_key] for a in report_key])
    totals = {k: 0.0 for k in ks}
    orders = list(itertools.permutations(range(n)))
    for order in orders:           # the model's similarity: content agreement, ties by `order`
        similarity = same_content + np.array(order, float)[None, :] * 1e-3
        recall = M.recall_at_k(M.ranks_of_positives(similarity, positive), ks)
        for k in ks:
            totals[k] += recall[k] / len(orders)
    got = ceiling.expected_recall(content, report_key, ks)
    for k in ks:
        assert got[k] == pytest.approx(totals[k], abs=1e-12)
    assert got[1] < got[2] < got[5] == 1.0


def test_retrieval_references_grow_with_what_the_model_recognises(tmp_path):
    references = ceiling.retrieval_references(base.get_config("smoke"), str(tmp_path))
    assert list(references) == list(ceiling.READERS)
    for k in ("R@1", "R@5", "R@10"):
        recalls = [r[k] for r in references.values()]
        assert all(0.0 < r <= 1.0 for r in recalls)
        assert recalls == sorted(recalls)        # each reader sees what the one before it does
    every_attribute = references["+ sizes (every stated attribute)"]
    assert references["finding names"]["R@1"] < every_attribute["R@1"]


def test_set_fields_types_values_like_the_command_line_and_names_a_bad_path():
    config = ceiling.set_fields(base.get_config("roi"), [
        "model.vision.position_init=normal", "optimizer.learning_rate=1e-3",
        "data.augment=true", "teacher.warmup_steps=7"])
    assert config.model.vision.position_init == "normal"
    assert config.optimizer.learning_rate == 1e-3 and config.data.augment is True
    assert config.teacher.warmup_steps == 7
    for bad in ("model.vision.position_initt=normal", "nothing.here=1", "data.augment=maybe",
                "total_steps"):
        with pytest.raises(SystemExit, match="--set"):
            ceiling.set_fields(base.get_config("roi"), [bad])


def test_markdown_names_the_dtype_and_explains_probe_rows_only_when_there_are_some():
    row = {"auroc_mean": 0.8, "accuracy_single_label": 0.7, "auroc/a": 0.9, "auroc/b": 0.7,
           "train_seconds": 12.0}
    plain = ceiling.markdown({"1200": row}, "", 0, dtype="bfloat16")
    assert "compute dtype bfloat16)" in plain and ceiling.PROBE_NOTE not in plain
    assert "| 1200 | 0.800 | 0.700 | 0.900 | 0.700 | 12 |" in plain
    probed = ceiling.markdown({"1200": row, "1200, linear probe of roi-seed0": row}, "", 0)
    assert ceiling.PROBE_NOTE in probed and "compute dtype" not in probed
    assert "the `roi` configuration's image tower trained on the labels (config" in probed
    only = ceiling.markdown({"1200, linear probe of roi-seed0": row}, "", 0)
    assert "linear probes of training runs' image towers, a head trained on the labels (" in only
    assert "| 1200, linear probe of roi-seed0 | 0.800 |" in probed


def test_main_rows_default_budget_probes_and_no_ceiling(tmp_path, monkeypatch):
    calls = []

    def fake_run(config, workdir, tower=None, out=None):
        calls.append((config.total_steps, tower))
        return {"auroc_mean": 0.5, "accuracy_single_label": 0.5, "train_seconds": 1.0}

    monkeypatch.setattr(ceiling, "run", fake_run)
    monkeypatch.setattr(ceiling, "run_image_tower", lambda w: f"tower of {w}")
    monkeypatch.setattr(ceiling, "retrieval_references", lambda config, workdir: {})
    argv = ["ceiling.py", f"--out={tmp_path}", "--probe=/runs/roi-seed0/"]
    monkeypatch.setattr(sys, "argv", argv)
    ceiling.main()
    steps = base.get_config("roi").total_steps                 # the default run's budget
    assert calls == [(steps, None), (steps, "tower of /runs/roi-seed0/")]
    saved = json.loads((tmp_path / "ceiling.json").read_text())
    assert list(saved["results"]) == [str(steps), f"{steps}, linear probe of roi-seed0"]
    calls.clear()
    monkeypatch.setattr(sys, "argv", argv + ["--steps=5,7", "--no-ceiling"])
    ceiling.main()
    assert calls == [(5, "tower of /runs/roi-seed0/"), (7, "tower of /runs/roi-seed0/")]
