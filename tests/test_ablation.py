"""The ablation script's aggregation, table and target checks (no training here)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import ablation  # noqa: E402


def fake_runs():
    def result(auroc, lat, r1, crop=None, r5=0.1):
        out = {"zeroshot/auroc_mean": auroc, "hard_negatives/accuracy/laterality": lat,
               "regions/region_to_caption_semantic_R@1": r1,
               "retrieval/image_to_report_R@5": r5}
        if crop is not None:
            out["regions_crop/region_to_caption_semantic_R@1"] = crop
        return out

    return {"roi": {"0": result(0.92, 0.96, 0.70), "1": result(0.94, 0.98, 0.62)},
            "global": {"0": result(0.80, 0.50, 0.05, crop=0.30),
                       "1": result(0.82, 0.52, 0.07, crop=0.34, r5=0.14)}}


def test_aggregate_mean_and_sample_std():
    summary = ablation.aggregate(fake_runs())
    assert summary["roi"]["zeroshot/auroc_mean"]["mean"] == pytest.approx(0.93)
    assert summary["roi"]["zeroshot/auroc_mean"]["std"] == pytest.approx(0.01414, abs=1e-5)
    assert summary["global"]["regions_crop/region_to_caption_semantic_R@1"]["n"] == 2
    assert "regions_crop/region_to_caption_semantic_R@1" not in summary["roi"]


def test_targets_use_head_for_roi_and_best_of_head_or_crop_for_global():
    rows = {what: (value, ok) for what, value, _, ok in
            ablation.targets(ablation.aggregate(fake_runs()))}
    assert rows["roi zero-shot AUROC"] == (pytest.approx(0.93), True)
    assert rows["roi semantic region->caption R@1"] == (pytest.approx(0.66), True)
    # global's crop score (0.32) is its better region score: 0.66 - 0.32 = 0.34 >= 0.20.
    assert rows["roi - global, semantic region->caption R@1"] == (pytest.approx(0.34), True)
    assert rows["roi - global, laterality accuracy"] == (pytest.approx(0.46), True)
    assert rows["roi - global, image->report R@5"] == (pytest.approx(-0.02), False)


def test_markdown_table_lists_variants_and_missing_metrics():
    summary = ablation.aggregate(fake_runs())
    text = ablation.markdown(summary, fake_runs(), "steps=10", [0, 1])
    assert "| metric | global | roi |" in text
    assert "| zero-shot AUROC (mean) | 0.810 ± 0.014 | 0.930 ± 0.014 |" in text
    assert "| region->caption semantic R@1 (crop) | 0.320 ± 0.028 | - |" in text
    assert "hard negatives: zone" not in text  # no run reports it


def test_readme_block_is_replaced_and_the_rest_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n## Next\n")
    table = ablation.markdown(ablation.aggregate(fake_runs()), fake_runs(), "steps=10", [0, 1])
    ablation.write_readme(table, str(readme))
    first = readme.read_text()
    assert first.startswith("# Title\n\nintro\n\n## Next\n")
    assert "<!-- ablation.py: begin -->" in first and "<!-- ablation.py: end -->" in first
    assert "# Ablation on the embedded" not in first and "#### Targets" in first
    assert "| zero-shot AUROC (mean) | 0.810 ± 0.014 | 0.930 ± 0.014 |" in first
    ablation.write_readme(table.replace("0.930", "0.999"), str(readme))  # rerun: replaced
    second = readme.read_text()
    assert second.count("<!-- ablation.py: begin -->") == 1 and "0.999" in second
    assert second.startswith("# Title\n\nintro\n\n## Next\n")
