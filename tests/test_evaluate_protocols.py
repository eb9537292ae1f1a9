"""evaluate() end to end with a tiny random model: the evaluation split (region head, crop
baseline, grounding, report) and every real-data protocol on fixture copies in the official
layouts, each protocol's numbers checked against scikit-learn / a direct computation."""

import json
import os
import sys
import types

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fixtures import cxr_formats_a as fx  # noqa: E402
from configs.base import get_config  # noqa: E402

import rmc_jax.evaluate as E  # noqa: E402
from rmc_jax.data.sources.chexpert import COMPETITION_LABELS, build_chexpert_5x200  # noqa: E402
from rmc_jax.data.tokenizer import train_wordpiece  # noqa: E402
from rmc_jax.evaluate import protocols as P, tasks  # noqa: E402
from rmc_jax.evaluate.embed import Encoders  # noqa: E402
from rmc_jax.models import build_model, init_params  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_config(**evals):
    config = get_config("smoke")
    config.data.eval_size = 8
    config.evals.update(evals)
    return config


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    model = build_model(config.model)
    params = jax.device_get(init_params(model, jax.random.key(0)))
    corpus = ["small right upper lobe nodule", "left pleural effusion", "moderate cardiomegaly",
              "right lower lobe pneumonia", "no acute cardiopulmonary process",
              "lungs are clear", "pulmonary edema", "atelectasis"] * 3
    tokenizer = train_wordpiece(corpus, config.data.vocab_size, config.data.max_text_len)
    return model, params, tokenizer


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("copies")
    chexpert = fx.write_chexpert(str(root / "chexpert"), per_class=3)
    five_by_200 = build_chexpert_5x200(chexpert["root"], root / "5x200.csv", per_class=3)
    fx.write_chexpert_test(str(root / "chexpert_test"))
    fx.write_rsna(str(root / "rsna"))
    fx.write_mimic_cxr(str(root / "mimic"), reports_root=str(root / "reports"))
    fx.write_ms_cxr(str(root / "ms_cxr"), images_root=str(root / "mimic"))
    return dict(chexpert=chexpert["root"], chexpert_5x200_csv=str(five_by_200),
                chexpert_test=str(root / "chexpert_test"), rsna_pneumonia=str(root / "rsna"),
                ms_cxr=str(root / "ms_cxr"), ms_cxr_split="all", mimic_cxr=str(root / "mimic"),
                mimic_cxr_reports=str(root / "reports"), mimic_cxr_split="all")


@pytest.fixture(scope="module")
def evaluated(tiny, copies, tmp_path_factory):
    """One evaluate() call with every protocol; the raw scores are captured for the checks."""
    model, params, tokenizer = tiny
    config = tiny_config(protocols=",".join(P.PROTOCOLS))
    config.evals.datasets.update(copies)
    workdir = str(tmp_path_factory.mktemp("run"))
    captured = {}
    original = E.compute

    def compute(*args, **kwargs):
        captured["results"], captured["raw"] = original(*args, **kwargs)
        return captured["results"], captured["raw"]

    E.compute = compute
    try:
        results = E.evaluate(model, params, config, tokenizer, workdir, batch_size=8)
    finally:
        E.compute = original
    return results, captured["raw"], workdir


def _auroc(scores, labels):
    from sklearn.metrics import roc_auc_score
    return roc_auc_score(labels, scores)


def test_results_json_report_and_stable_names(evaluated):
    results, _, workdir = evaluated
    written = json.load(open(os.path.join(workdir, "eval", "results.json")))
    assert all(isinstance(v, float) and np.isfinite(v) for v in written.values())
    for key in ("zeroshot/auroc_mean", "zeroshot/auroc_mean_ensemble",
                "retrieval/image_to_report_R@1", "retrieval/report_to_image_median_rank",
                "regions/region_to_caption_R@1",
                "regions/caption_to_region_semantic_R@10", "hard_negatives/accuracy_mean",
                "lesion_retrieval/R@1", "lesion_retrieval/semantic_R@10",
                "regions_crop/region_to_caption_R@5", "lesion_retrieval_crop/R@10",
                "hard_negatives_crop/accuracy_mean", "grounding/cnr", "grounding/miou",
                "grounding/miou_rescaled", "grounding/pointing_accuracy", "grounding/phrases"):
        assert key in written, key
    # Lesion retrieval is the caption -> region score under its own name, not a second number.
    for k in (1, 5, 10):
        assert written[f"lesion_retrieval/R@{k}"] == written[f"regions/caption_to_region_R@{k}"]
        assert written[f"lesion_retrieval_crop/R@{k}"] == \
            written[f"regions_crop/caption_to_region_R@{k}"]
    for key in ("grounding/miou", "grounding/miou_rescaled", "grounding/pointing_accuracy"):
        assert 0.0 <= written[key] <= 1.0
    assert written["grounding/cnr"] >= 0 and written["grounding/phrases"] >= 1
    eval_dir = os.path.join(workdir, "eval")
    # eval/prompts.json: what each zero-shot task scored each class with (today's defaults).
    prompts = json.load(open(os.path.join(eval_dir, "prompts.json")))
    assert {"zeroshot", "chexpert_test/zeroshot", "chexpert_5x200/zeroshot"} <= set(prompts)
    effusion = prompts["chexpert_test/zeroshot"]["Pleural Effusion"]
    assert effusion == tasks.default_prompts(["Pleural Effusion"])["Pleural Effusion"]
    assert "the costophrenic angles are sharp" in effusion["negative"]
    text = open(os.path.join(eval_dir, "report.md")).read()
    assert "| `chexpert_test/zeroshot/auroc_mean` |" in text
    for name in ("roc_zeroshot.png", "roc_chexpert_5x200_zeroshot.png",
                 "roc_chexpert_test_zeroshot.png", "roc_rsna_pneumonia_zeroshot.png",
                 "recall_at_k.png", "grounding_examples.png", "hard_negatives.png"):
        data = open(os.path.join(eval_dir, name), "rb").read()
        assert data.startswith(PNG) and len(data) > 2000 and f"]({name})" in text, name


def test_chexpert_5x200_accuracy_is_the_argmax_over_the_five_classes(evaluated):
    results, raw, _ = evaluated
    assert results["chexpert_5x200/examples"] == 15
    curves = raw["roc"]["chexpert_5x200/zeroshot"]
    assert list(curves) == list(COMPETITION_LABELS)
    scores = np.stack([curves[name][0] for name in COMPETITION_LABELS], 1)   # [15, 5]
    truth = np.stack([curves[name][1] for name in COMPETITION_LABELS], 1).argmax(1)
    assert truth.tolist() == [c for c in range(5) for _ in range(3)]
    assert results["chexpert_5x200/zeroshot/accuracy_single_label"] == pytest.approx(
        np.mean(scores.argmax(1) == truth))


def test_chexpert_test_mean_auroc_over_competition_labels(evaluated):
    results, raw, _ = evaluated
    assert results["chexpert_test/examples"] == 2  # the frontal images of the test fixture
    curves = raw["roc"]["chexpert_test/zeroshot"]
    # Two test images: Atelectasis and Consolidation have no positive among them, no AUROC.
    assert set(curves) == {"Cardiomegaly", "Edema", "Pleural Effusion"}
    assert results["chexpert_test/zeroshot/classes_skipped"] == 2
    assert any(note.startswith("`chexpert_test/zeroshot`: no AUROC for 2 of 5 classes")
               and "Atelectasis (no positive example)" in note for note in raw["notes"])
    per_class = {}
    for name, (scores, labels) in curves.items():
        per_class[name] = _auroc(scores, labels)
        assert results[f"chexpert_test/zeroshot/auroc/{name}"] == pytest.approx(per_class[name])
    assert results["chexpert_test/zeroshot/auroc_mean"] == pytest.approx(
        np.mean(list(per_class.values())))


def test_rsna_pneumonia_vs_normal(evaluated):
    results, raw, _ = evaluated
    # Fixture: two 'Lung Opacity' patients (Target 1), one 'Normal', one 'Not Normal' (left out).
    assert results["rsna_pneumonia/zeroshot/positives"] == 2
    assert results["rsna_pneumonia/zeroshot/negatives"] == 1
    probability, truth = raw["roc"]["rsna_pneumonia/zeroshot"]["Pneumonia"]
    assert truth.tolist() == [True, False, True]
    assert results["rsna_pneumonia/zeroshot/auroc"] == pytest.approx(_auroc(probability, truth))
    assert results["rsna_pneumonia/zeroshot/accuracy"] == pytest.approx(
        np.mean((probability > 0.5) == truth))


def test_ms_cxr_grounding_and_mimic_retrieval(evaluated):
    results, raw, _ = evaluated
    # MS-CXR fixture: ms1 has 'Right lower lobe pneumonia' (two boxes: one phrase) and
    # 'small left pleural effusion'; ms2 one box.
    assert results["ms_cxr/grounding/phrases"] == 3
    scores = raw["grounding"]["ms_cxr/grounding"]
    assert [len(slots) for _, slots in scores["phrases"]] == [2, 1, 1]
    assert results["ms_cxr/grounding/pointing_accuracy"] == pytest.approx(
        scores["pointing"].mean())
    for key in ("miou", "miou_rescaled", "pointing_accuracy"):
        assert 0 <= results[f"ms_cxr/grounding/{key}"] <= 1
    for key in ("ms_cxr/lesion_retrieval/R@1", "ms_cxr/lesion_retrieval_crop/R@1",
                "ms_cxr/hard_negatives/accuracy_mean"):
        assert 0 <= results[key] <= 1, key
    assert results["ms_cxr/lesion_retrieval/R@10"] == 1.0  # 4 regions: always within 10
    assert results["mimic_cxr/examples"] == 4  # frontal images of all splits
    assert results["mimic_cxr/retrieval/image_to_report_R@10"] == 1.0
    ranks = raw["ranks"]["mimic_cxr/retrieval/image_to_report"]
    assert results["mimic_cxr/retrieval/image_to_report_R@1"] == pytest.approx(
        np.mean(ranks <= 1))


def test_crop_baseline_embeds_the_box_with_the_image_tower(tiny):
    model, params, _ = tiny
    encoders = Encoders(model, params, chunk=4)
    size = model.vision.image_size
    rng = np.random.default_rng(0)
    # Constant images: any crop of one, resized, is the same constant image.
    images = np.broadcast_to(rng.normal(size=(3, 1, 1, 1)), (3, size, size, 1)).astype(np.float32)
    boxes = np.tile(np.array([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]], np.float32), (3, 1, 1))
    valid = np.array([[True, True], [True, False], [False, True]])
    crops = encoders.crops(images, boxes, valid)
    whole = np.asarray(encoders.image_only(images))
    for b, r in zip(*np.nonzero(valid)):
        np.testing.assert_allclose(crops[b, r], whole[b], atol=1e-5)
    assert not crops[~valid].any()


def test_region_mode_selects_the_metric_names():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 2, 4))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    data = {"regions": emb, "regions_crop": emb[:, ::-1], "captions": emb,
            "negatives": rng.normal(size=(2, 2, 1, 4)), "box_mask": np.ones((2, 2), bool),
            "caption_hash": np.arange(4).reshape(2, 2), "neg_valid": np.ones((2, 2, 1), bool),
            "neg_kind": np.zeros((2, 2, 1), int), **{
                n: np.zeros((2, 2), int) for n in ("finding_ids", "side_ids", "zone_ids",
                                                   "size_ids")}}
    for mode, expected in (("head", {"regions", "lesion_retrieval", "hard_negatives"}),
                           ("crop", {"regions_crop", "lesion_retrieval_crop",
                                     "hard_negatives_crop"}),
                           ("both", {"regions", "lesion_retrieval", "hard_negatives",
                                     "regions_crop", "lesion_retrieval_crop",
                                     "hard_negatives_crop"})):
        context = types.SimpleNamespace(region_mode=mode)
        results = E._region_tasks(data, context, "", ("regions", "hard_negatives"), None)
        assert {k.split("/")[0] for k in results} == expected
    assert E._region_tasks(data, types.SimpleNamespace(region_mode="head"), "x/",
                           ("regions",), None)["x/lesion_retrieval/R@1"] == 1.0


def test_bad_options_say_what_is_expected(tiny):
    model, params, tokenizer = tiny
    with pytest.raises(ValueError, match="region_mode = 'boxes'.*'head', 'crop', 'both'"):
        E.compute(model, params, tiny_config(region_mode="boxes"), tokenizer)
    with pytest.raises(ValueError, match="unknown protocol.*chexpert_5x200"):
        P.parse_protocols("chexpert, ms_cxr")
    with pytest.raises(ValueError, match="evals.datasets.chexpert_test or evals.datasets."
                                         "chexpert is empty"):
        P.open_protocol("chexpert_test", {"chexpert": ""})


class _Unreadable:
    """``source`` with example ``bad`` raising as an unreadable image does; ``keep`` (the other
    indices) gives the same source without it."""

    def __init__(self, source, bad=None, keep=None):
        self.source, self.bad = source, bad
        self.keep = list(range(len(source))) if keep is None else keep

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, index):
        if self.keep[index] == self.bad:
            raise OSError(f"cannot identify image file '/data/{self.bad}.png'")
        return self.source[self.keep[index]]

    def __getattr__(self, name):
        return getattr(self.source, name)


def test_evaluation_skips_an_unreadable_example_and_counts_it(tiny):
    model, params, tokenizer = tiny
    from rmc_jax.data.sources import open_source

    source = open_source("synthetic", "", "test", 9, 0, 32)
    config = tiny_config()
    config.data.max_bad_fraction = 0.2
    with pytest.warns(UserWarning, match=r"skipping unreadable example 4 of synthetic"):
        with_bad, raw = E.compute(model, params, config, tokenizer,
                                  source=_Unreadable(source, bad=4), batch_size=4)
    readable, _ = E.compute(model, params, config, tokenizer,
                            source=_Unreadable(source, keep=[0, 1, 2, 3, 5, 6, 7, 8]),
                            batch_size=4)
    assert with_bad.pop("eval/skipped") == 1 and readable.pop("eval/skipped") == 0
    # Every number is the one of the 8 readable examples: none stands in for example 4.
    assert with_bad.keys() == readable.keys() and with_bad["eval/examples"] == 8
    for key, value in readable.items():
        assert with_bad[key] == pytest.approx(value, nan_ok=True), key
    assert raw["skipped"] == {"eval": [
        "synthetic[4]: OSError: cannot identify image file '/data/4.png'"]}
    config.data.max_bad_fraction = 0.1
    with pytest.raises(E.pipe.BadDataError, match=r"1 of 9 examples of the evaluation split "
                                                   r"\(synthetic\) .*\n  synthetic\[4\]: OSError"):
        E.compute(model, params, config, tokenizer, source=_Unreadable(source, bad=4))


def test_regions_past_evals_max_regions_are_counted_not_dropped_silently(tiny):
    """Training keeps data.max_regions (4 in smoke) regions of an image; the evaluation has its
    own bound, evals.max_regions (16), so images with 5 or 6 regions are scored whole, and
    regions past a lower bound are counted in results, the summary line and report.md."""
    from rmc_jax.data.sources import open_source
    from rmc_jax.evaluate import report

    model, params, tokenizer = tiny
    source = open_source("synthetic", "", "test", 96, 0, 32)
    counts = [len(source[i].boxes) for i in range(len(source))]
    keep = ([i for i, n in enumerate(counts) if n >= 5][:3]
            + [i for i, n in enumerate(counts) if 1 <= n <= 2][:3])
    assert len(keep) == 6
    subset = _Unreadable(source, keep=keep)
    config = tiny_config()
    assert config.data.max_regions == 4 and config.evals.max_regions == 16
    whole, _ = E.compute(model, params, config, tokenizer, source=subset, batch_size=4)
    bounded, raw = E.compute(model, params, tiny_config(max_regions=4), tokenizer,
                             source=subset, batch_size=4)
    cut = bounded["eval/regions_beyond_max_regions"]
    assert whole["eval/regions_beyond_max_regions"] == 0 and cut >= 3
    assert bounded["eval/regions"] + cut == whole["eval/regions"] > 4 * 3
    assert f"eval/regions_beyond_max_regions={int(cut)}" in E.summary(bounded)
    assert "regions_beyond" not in E.summary(whole)
    text = "\n".join(report._left_out(bounded, raw))
    assert f"{int(cut)} region(s) of `eval` left out of its region metrics" in text
    with pytest.raises(ValueError, match="evals.max_regions = 0; expected >= 1"):
        E.compute(model, params, tiny_config(max_regions=0), tokenizer, source=subset)


def test_the_evaluation_split_gets_the_source_options(tmp_path):
    images, reports = str(tmp_path / "mimic"), str(tmp_path / "reports")
    fx.write_mimic_cxr(images, reports_root=reports)
    fx.write_ms_cxr(str(tmp_path / "ms_cxr"), images_root=images)
    config = tiny_config()
    config.data.update(train="ms_cxr", root=str(tmp_path / "ms_cxr"), eval="ms_cxr",
                       eval_split="test",
                       source_options=f"images_root={images},reports_root={reports}")
    (example,) = [E.eval_source(config)[i] for i in range(1)]
    assert example.example_id == "ms2" and "Small right pleural effusion" in example.report
    # Training on another dataset: options aimed at ms_cxr by name reach its evaluation split.
    config.data.update(train="synthetic", source_options=f"ms_cxr.images_root={images},"
                                                         f"ms_cxr.reports_root={reports}")
    assert "Small right pleural effusion" in E.eval_source(config)[0].report


def test_a_mixture_is_evaluated_on_each_example_once(tmp_path):
    from fixtures import cxr_formats_b as fx_b

    fx_b.write_nih(str(tmp_path / "nih"))
    fx_b.write_iu_xray(str(tmp_path / "iu"))
    config = tiny_config()
    config.data.update(eval="nih_cxr14:1,iu_xray:3", eval_split="all", eval_size=0,
                       eval_root=f"nih_cxr14={tmp_path / 'nih'},iu_xray={tmp_path / 'iu'}")
    source = E.eval_source(config)
    ids = [source[i].example_id for i in range(len(source))]
    # 4 NIH + 5 IU X-ray images; the training weights (1:3) would cycle IU's 5 to fill 12.
    assert len(ids) == len(set(ids)) == 9
