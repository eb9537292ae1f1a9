"""``eval/report.md`` and its figures: what a researcher looks at after an evaluation.

Figures (PNG, next to the report):

* ``roc_<task>.png``: ROC curves per class of each zero-shot task (evaluation split and
  protocols), AUROC in the legend;
* ``recall_at_k.png``: recall@K against K for image -> report and report -> image retrieval,
  region -> caption and caption -> region (lesion retrieval) matching, exact and semantic, for the
  region head and the crop baseline, and for the protocols;
* ``grounding_examples.png``: test images with each phrase's boxes, its caption (as the model
  read it) and its patch-phrase similarity map overlaid, the map's maximum marked;
* ``hard_negatives.png``: hard-negative accuracy per perturbation type (region head and crop
  baseline), chance at 0.5.

The report starts with the bad examples left out of each split, by name (``raw['skipped']``),
a table of headline numbers, then notes on what could not be measured (``raw['notes']``, e.g.
zero-shot classes without a negative example, retrieval without reports), the single-label
zero-shot confusion matrix (``raw['confusion']``), the figures, and every metric.
Plots use matplotlib's Agg backend through ``Figure`` objects (no pyplot state, no display).
"""

from __future__ import annotations

import math
import os
import sys
import textwrap

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # leave an interactive session's backend alone
    matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rmc_jax.evaluate import grounding  # noqa: E402
from rmc_jax.evaluate import metrics as M  # noqa: E402

# (metric, what it is) in the order of the headline table; absent metrics are skipped.
HEADLINE = (
    ("zeroshot/auroc_mean", "zero-shot AUROC, mean over classes: the headline protocol, "
     "CheXzero's softmax over positive/negative prompt ensembles"),
    ("zeroshot/accuracy_single_label", "zero-shot accuracy on single-label images: argmax of "
     "p(positive) over the classes"),
    ("zeroshot/accuracy_single_label_normal",
     "zero-shot accuracy on the normal single-label images"),
    ("zeroshot/accuracy_single_label_findings",
     "zero-shot accuracy on the single-label images with a finding"),
    ("zeroshot/accuracy_which_finding",
     "zero-shot accuracy naming the finding (argmax over the finding classes alone) on the "
     "single-label images with a finding"),
    ("zeroshot/margin_first_component",
     "share of the variance of the finding classes' pos-neg margins in their first principal "
     "component: near 1, the classes tell abnormal from normal and little else"),
    ("zeroshot/auroc_mean_ensemble", "zero-shot AUROC, positive-prompt ensemble alone "
     "(secondary)"),
    ("retrieval/image_to_report_R@5", "image -> report R@5"),
    ("retrieval/report_to_image_R@5", "report -> image R@5"),
    ("regions/region_to_caption_R@1", "region -> caption R@1 (region head)"),
    ("regions/region_to_caption_semantic_R@1", "region -> caption semantic R@1 (region head)"),
    ("lesion_retrieval/R@1", "lesion description -> (image, region) R@1 (region head)"),
    ("lesion_retrieval/R@5", "lesion description -> (image, region) R@5 (region head)"),
    ("lesion_retrieval/R@10", "lesion description -> (image, region) R@10 (region head)"),
    ("lesion_retrieval/semantic_R@1", "lesion retrieval semantic R@1 (region head)"),
    ("regions_crop/region_to_caption_R@1", "region -> caption R@1 (crop baseline)"),
    ("lesion_retrieval_crop/R@1", "lesion retrieval R@1 (crop baseline)"),
    ("lesion_retrieval_crop/R@10", "lesion retrieval R@10 (crop baseline)"),
    ("hard_negatives/accuracy_mean", "hard-negative accuracy, mean over types (region head)"),
    ("hard_negatives_crop/accuracy_mean", "hard-negative accuracy, mean (crop baseline)"),
    ("grounding/cnr", "phrase grounding CNR"),
    ("grounding/miou", "phrase grounding mIoU (thresholds 0.1-0.5 on cosine)"),
    ("grounding/miou_rescaled", "phrase grounding mIoU (map rescaled to [0, 1])"),
    ("grounding/pointing_accuracy", "phrase grounding pointing accuracy"),
    ("chexpert_5x200/zeroshot/accuracy_single_label", "CheXpert 5x200 5-way accuracy"),
    ("chexpert_test/zeroshot/auroc_mean", "CheXpert test mean AUROC (5 competition labels)"),
    ("chexpert_test/zeroshot/auroc_mean_ensemble",
     "CheXpert test mean AUROC, positive-prompt ensemble alone (secondary)"),
    ("rsna_pneumonia/zeroshot/auroc", "RSNA pneumonia vs normal AUROC"),
    ("rsna_pneumonia/zeroshot/accuracy", "RSNA pneumonia vs normal accuracy"),
    ("ms_cxr/grounding/cnr", "MS-CXR grounding CNR"),
    ("ms_cxr/grounding/miou", "MS-CXR grounding mIoU"),
    ("ms_cxr/grounding/pointing_accuracy", "MS-CXR pointing accuracy"),
    ("ms_cxr/lesion_retrieval/R@1", "MS-CXR phrase -> (image, box) R@1"),
    ("mimic_cxr/retrieval/image_to_report_R@1", "MIMIC-CXR image -> report R@1"),
    ("mimic_cxr/retrieval/image_to_report_R@10", "MIMIC-CXR image -> report R@10"),
    ("mimic_cxr/retrieval/report_to_image_R@10", "MIMIC-CXR report -> image R@10"),
)


def _save(figure: Figure, path: str) -> str:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=80)
    return path


def _file_name(key: str) -> str:
    return key.replace("/", "_").replace("@", "at")


def plot_roc(curves: dict, title: str, path: str) -> str:
    """curves {class: (scores [n], labels [n])} -> one axes with a ROC curve per class."""
    figure = Figure(figsize=(5.5, 5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    drawn = 0
    for name, (scores, labels) in curves.items():
        fpr, tpr = M.roc_curve(scores, labels)
        if not len(fpr):
            continue
        drawn += 1
        ax.plot(fpr, tpr, linewidth=1.4,
                label=f"{name} ({M.auroc(scores, labels):.3f}, n+={int(np.sum(labels))})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           title=title)
    if drawn:
        ax.legend(fontsize=7, loc="lower right", title="class (AUROC, positives)",
                  title_fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def plot_recall(ranks: dict, path: str, max_k: int = 100) -> str:
    """ranks {'<group>/<direction>': [Q] ranks} -> recall@K curves, one panel per group."""
    groups: dict[str, dict] = {}
    for key, values in ranks.items():
        group, direction = key.rsplit("/", 1)
        groups.setdefault(group, {})[direction] = np.asarray(values)
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows))
    for index, (group, directions) in enumerate(groups.items()):
        ax = figure.add_subplot(rows, columns, index + 1)
        for direction, values in directions.items():
            candidates = int(values.max()) if len(values) else 1
            ks, recall = M.recall_curve(values, min(max_k, max(candidates, 1)))
            ax.plot(ks, recall, linewidth=1.4, linestyle="--" if "semantic" in direction else "-",
                    label=f"{direction.replace('_', ' ')} (R@1 {recall[0]:.2f})")
        ax.set(xscale="log", xlabel="K", ylabel="recall@K", ylim=(0, 1.02), title=group)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return _save(figure, path)


def plot_hard_negatives(results: dict, path: str) -> str | None:
    """Bar chart of hard-negative accuracy per perturbation type (head and crop side by side)."""
    series = {}
    for prefix, label in (("hard_negatives", "region head"), ("hard_negatives_crop", "crop")):
        values = {k.rsplit("/", 1)[1]: v for k, v in results.items()
                  if k.startswith(prefix + "/accuracy/") and np.isfinite(v)}
        if values:
            series[label] = values
    if not series:
        return None
    kinds = list(dict.fromkeys(k for values in series.values() for k in values))
    figure = Figure(figsize=(6, 3.6))
    ax = figure.add_subplot()
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        x = np.arange(len(kinds)) + (i - (len(series) - 1) / 2) * width
        heights = [values.get(k, np.nan) for k in kinds]
        bars = ax.bar(x, heights, width, label=label)
        for bar, height in zip(bars, heights):
            if np.isfinite(height):
                ax.text(bar.get_x() + bar.get_width() / 2, height + 0.01, f"{height:.2f}",
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(np.arange(len(kinds)), kinds)
    ax.set(ylim=(0, 1.25), ylabel="true caption preferred",
           title="hard-negative accuracy per perturbation type")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    figure.tight_layout()
    return _save(figure, path)


def plot_grounding(samples: dict, path: str, max_panels: int = 8) -> str | None:
    """Grid of sample images, one panel per phrase: boxes, caption, similarity map overlaid."""
    panels = []
    for i in range(len(samples["image"])):
        seen = {}
        for r in np.flatnonzero(samples["box_mask"][i]):
            seen.setdefault(samples["captions"][i][r], []).append(int(r))
        panels.extend((i, slots) for slots in seen.values())
    panels = panels[:max_panels]
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(2.8 * columns, 3.2 * rows))
    size = samples["image"].shape[1:3]
    maps = samples.get("patch_maps")
    for index, (i, slots) in enumerate(panels):
        ax = figure.add_subplot(rows, columns, index + 1)
        image = np.clip(samples["image"][i] * samples["pixel_std"] + samples["pixel_mean"], 0, 1)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if maps is not None:  # over the image only: the letterbox padding stays clear
            heat = grounding.upsample(maps[i, slots[0]], size)
            content = grounding.box_masks(samples["content"][i], size)
            ax.imshow(np.where(content, heat, np.nan), cmap="jet", alpha=0.4,
                      interpolation="nearest")
            y, x = np.unravel_index(grounding.peaks(heat[None], content[None])[0], heat.shape)
            ax.plot([x], [y], marker="+", color="white", markersize=12, markeredgewidth=2)
        for r in slots:
            x0, y0, x1, y1 = samples["boxes"][i, r] * np.array([size[1], size[0]] * 2)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor="lime", linewidth=1.5))
        ax.set_title(textwrap.fill(samples["captions"][i][slots[0]] or "(empty caption)", 34),
                     fontsize=7)
        ax.set_axis_off()
    figure.suptitle("phrase grounding: boxes (green), patch-phrase similarity, maximum (+)",
                    fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def _format(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _left_out(finite: dict, raw: dict) -> list[str]:
    """Report lines naming the bad examples left out of each split (``raw['skipped']``) and
    counting the regions past ``evals.max_regions`` left out of its region metrics."""
    lines = []
    for split, names in raw.get("skipped", {}).items():
        count = int(finite.get(f"{split}/skipped", len(names)))
        lines += [f"**{count} bad example(s) left out of `{split}`** (could not be read or "
                  "prepared; every metric covers the readable examples only):", ""]
        lines += [f"- `{name}`" for name in names] + [""]
    for key, count in finite.items():
        if key.endswith("/regions_beyond_max_regions") and count:
            split = key.rsplit("/", 1)[0]
            lines += [f"**{int(count)} region(s) of `{split}` left out of its region metrics**: "
                      "past an image's first `evals.max_regions` (raise it to score them).", ""]
    return lines


def _confusion(raw: dict) -> list[str]:
    """Report lines: the single-label zero-shot confusion matrix of each zero-shot task
    (``raw['confusion']``), true class per row, predicted class per column."""
    lines = []
    for group, confusion in raw.get("confusion", {}).items():
        classes, counts = confusion["classes"], np.asarray(confusion["counts"])
        if not counts.sum():
            continue
        lines += [f"## Single-label zero-shot predictions: {group}", "",
                  f"{int(counts.sum())} images with exactly one positive class; true class per "
                  "row, predicted class (argmax of p(positive)) per column.", "",
                  "| true \\ predicted | " + " | ".join(classes) + " | correct |",
                  "|---|" + "---:|" * (len(classes) + 1)]
        for name, row, hit in zip(classes, counts, np.diag(counts)):
            if row.sum():
                lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row)
                             + f" | {hit / row.sum():.3f} |")
        lines.append("")
    return lines


def write_report(results: dict, raw: dict, directory: str, title: str = "rmc_jax evaluation"
                 ) -> str:
    """Write ``report.md`` and its PNG figures into ``directory``; returns the report's path."""
    os.makedirs(directory, exist_ok=True)
    figures = []
    for group, curves in raw.get("roc", {}).items():
        if any(0 < np.sum(labels) < len(labels) for _, labels in curves.values()):
            name = f"roc_{_file_name(group)}.png"
            plot_roc(curves, f"ROC per class: {group}", os.path.join(directory, name))
            figures.append((f"ROC curves: {group}", name))
    if raw.get("ranks"):
        plot_recall(raw["ranks"], os.path.join(directory, "recall_at_k.png"))
        figures.append(("Recall@K (dashed: semantic matches count)", "recall_at_k.png"))
    if raw.get("samples") and plot_grounding(raw["samples"],
                                             os.path.join(directory, "grounding_examples.png")):
        figures.append(("Test images with boxes, captions and phrase-grounding maps",
                        "grounding_examples.png"))
    if plot_hard_negatives(results, os.path.join(directory, "hard_negatives.png")):
        figures.append(("Hard-negative accuracy per perturbation type", "hard_negatives.png"))

    finite = {k: float(v) for k, v in results.items()
              if v is not None and math.isfinite(float(v))}
    lines = [f"# {title}", ""]
    if "eval/examples" in finite:
        lines += [f"{int(finite['eval/examples'])} test images, "
                  f"{int(finite.get('eval/regions', 0))} regions.", ""]
    lines += _left_out(finite, raw)
    lines += ["## Headline numbers", "", "| metric | value | meaning |", "|---|---|---|"]
    for key, meaning in HEADLINE:
        if key in finite:
            value = _format(finite[key])
            low, high = finite.get(key + "_ci_low"), finite.get(key + "_ci_high")
            if low is not None and high is not None:
                value += f" [{low:.3f}, {high:.3f}]"
            lines.append(f"| `{key}` | {value} | {meaning} |")
    lines.append("")
    if raw.get("notes"):  # what was not measured, and why
        lines += ["## Notes", ""] + [f"- {note}" for note in raw["notes"]] + [""]
    lines += _confusion(raw)
    for caption, name in figures:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    lines += ["## All metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{key}` | {_format(value)} |" for key, value in sorted(finite.items())]
    path = os.path.join(directory, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path
