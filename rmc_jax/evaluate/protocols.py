"""Standard zero-shot protocols on local copies of public chest X-ray datasets.

``config.evals.protocols = 'chexpert_5x200,chexpert_test,rsna_pneumonia,ms_cxr,mimic_cxr'``
runs the named protocols after the evaluation split, reading each dataset from the folder set in
``config.evals.datasets`` (official layouts, see ``rmc_jax.data.sources``). Every metric name is
the protocol's name followed by the evaluation split's metric name for the same task:

=================  ==========================================================================
protocol           what is measured (metric names)
=================  ==========================================================================
chexpert_5x200     5-way zero-shot classification of the pinned "GLoRIA-style" CheXpert 5x200
                   (``chexpert.CheXpert5x200``: frontal train images positive for exactly one
                   competition label, 200 per class, seed 0, or the CSV in
                   ``datasets.chexpert_5x200_csv``): argmax over the 5 classes of the
                   headline p(positive) (``tasks.zero_shot``),
                   ``chexpert_5x200/zeroshot/accuracy_single_label`` (the argmax over the
                   positive-prompt ensembles of GLoRIA/MedCLIP: ``..._ensemble``); also the
                   one-vs-rest ``chexpert_5x200/zeroshot/auroc/<class>``, ``.../auroc_mean``.
chexpert_test      the CheXpert test set (``test_labels.csv`` / ``groundtruth.csv``, frontal
                   images, under ``datasets.chexpert_test`` or else ``datasets.chexpert``):
                   ``chexpert_test/zeroshot/auroc_mean`` over the 5 competition labels
                   (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion), per class
                   ``chexpert_test/zeroshot/auroc/<class>``, all under CheXzero's
                   positive/negative prompt softmax (its 0.889 is this number); the
                   positive-prompt ensemble alone: ``.../auroc_mean_ensemble``.
rsna_pneumonia     pneumonia (Target 1) vs normal (class 'Normal' of
                   ``stage_2_detailed_class_info.csv``; every Target 0 image when that file is
                   absent): softmax over the two classes' prompt ensembles,
                   ``rsna_pneumonia/zeroshot/{auroc,accuracy,positives,negatives}``.
ms_cxr             MS-CXR phrase grounding: ``ms_cxr/grounding/{cnr,miou,miou_rescaled,
                   pointing_accuracy,phrases}`` (see ``grounding``), plus phrase <-> box matching
                   ``ms_cxr/regions/...``, ``ms_cxr/lesion_retrieval/R@K`` and
                   ``ms_cxr/hard_negatives/...`` (and their ``_crop`` variants).
mimic_cxr          MIMIC-CXR test split image <-> report retrieval (FINDINGS + IMPRESSION):
                   ``mimic_cxr/retrieval/{image_to_report,report_to_image}_R@K`` and
                   ``..._median_rank``; images of one study share its report and all count.
=================  ==========================================================================

Images go through the evaluation pipeline (letterboxed to the model's input, no augmentation);
only the first ``datasets.max_examples`` examples are used when it is > 0.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from rmc_jax.data import sources as data_sources


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A dataset (registry name), the tasks run on it, and the zero-shot label columns."""

    name: str
    dataset: str
    tasks: tuple[str, ...]
    labels: tuple[str, ...] | None = None   # zero-shot classes (None: all of the source's)


COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                      "Pleural Effusion")

PROTOCOLS = {
    "chexpert_5x200": Protocol("chexpert_5x200", "chexpert_5x200", ("zeroshot",),
                               COMPETITION_LABELS),
    "chexpert_test": Protocol("chexpert_test", "chexpert", ("zeroshot",), COMPETITION_LABELS),
    "rsna_pneumonia": Protocol("rsna_pneumonia", "rsna_pneumonia", ("pneumonia",)),
    "ms_cxr": Protocol("ms_cxr", "ms_cxr", ("grounding", "regions", "hard_negatives")),
    "mimic_cxr": Protocol("mimic_cxr", "mimic_cxr", ("retrieval",)),
}

# The evals.datasets key(s) holding each protocol's dataset folder, first non-empty wins (the
# CheXpert test labels often live apart from train.csv / valid.csv).
ROOT_KEYS = {"chexpert_5x200": ("chexpert",), "chexpert_test": ("chexpert_test", "chexpert"),
             "rsna_pneumonia": ("rsna_pneumonia",), "ms_cxr": ("ms_cxr",),
             "mimic_cxr": ("mimic_cxr",)}


def parse_protocols(value) -> list[str]:
    """'chexpert_test, ms_cxr' (or a list) -> ['chexpert_test', 'ms_cxr'], names checked."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or ())]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ValueError(f"evals.protocols: unknown protocol(s) {unknown}; choose from "
                         f"{sorted(PROTOCOLS)}")
    return list(dict.fromkeys(names))


def _get(datasets, key, default=""):
    if datasets is None:
        return default
    try:
        value = datasets[key]
    except (KeyError, AttributeError, TypeError):
        value = getattr(datasets, key, default)
    return default if value is None else value


def open_protocol(name: str, datasets):
    """The source of protocol ``name`` from ``datasets`` (``config.evals.datasets`` or any
    mapping with its keys), limited to ``datasets.max_examples`` examples when > 0."""
    protocol = PROTOCOLS[name]
    root = next((r for r in (_get(datasets, key) for key in ROOT_KEYS[name]) if r), "")
    if not root:
        keys = " or ".join(f"evals.datasets.{key}" for key in ROOT_KEYS[name])
        raise ValueError(f"evals.protocols names {name!r} but {keys} is empty: set it to the "
                         f"local copy of the dataset (--config.evals.datasets."
                         f"{ROOT_KEYS[name][0]}=/path/to/copy)")
    if name == "chexpert_5x200":
        csv = _get(datasets, "chexpert_5x200_csv") or None
        source = data_sources.get_source(protocol.dataset, root, "test", csv=csv)
    elif name == "chexpert_test":
        source = data_sources.get_source(protocol.dataset, root, "test")
    elif name == "rsna_pneumonia":
        split_csv = _get(datasets, "rsna_split_csv") or None
        split = _get(datasets, "rsna_split") or ("test" if split_csv else "all")
        source = data_sources.get_source(protocol.dataset, root, split, split_csv=split_csv)
    elif name == "ms_cxr":
        images = _get(datasets, "ms_cxr_images") or _get(datasets, "mimic_cxr") or root
        reports = _get(datasets, "mimic_cxr_reports") or None
        source = data_sources.get_source(protocol.dataset, root,
                                         _get(datasets, "ms_cxr_split") or "test",
                                         images_root=images, reports_root=reports)
    else:  # mimic_cxr
        source = data_sources.get_source(protocol.dataset, root,
                                         _get(datasets, "mimic_cxr_split") or "test",
                                         reports_root=_get(datasets, "mimic_cxr_reports") or None)
    if not len(source):
        raise ValueError(f"protocol {name!r}: the dataset under {os.path.abspath(root)} has no "
                         "example in the requested split")
    size = int(_get(datasets, "max_examples", 0) or 0)
    return data_sources.Prefix(source, size) if size and len(source) > size else source


def label_columns(protocol: Protocol, label_names) -> list[int]:
    """Indices of the protocol's zero-shot classes among the source's ``label_names``."""
    if protocol.labels is None:
        return list(range(len(label_names)))
    missing = [n for n in protocol.labels if n not in label_names]
    if missing:
        raise ValueError(f"protocol {protocol.name!r}: the source has no label(s) {missing}; "
                         f"its labels are {list(label_names)}")
    return [list(label_names).index(n) for n in protocol.labels]


def pneumonia_targets(source, labels: np.ndarray, label_mask: np.ndarray):
    """RSNA pneumonia vs normal: (positive [N] bool, known [N] bool).

    Positive: Target 1. Negative: the 'Normal' class of the detailed class info; without that
    file, every Target 0 image (with a warning: 'not normal' images then count as normal).
    """
    names = list(source.label_names)
    p, normal = names.index("Pneumonia"), names.index("Normal")
    positive = (labels[:, p] == 1) & label_mask[:, p]
    if getattr(source, "class_csv", None):
        negative = (labels[:, normal] == 1) & label_mask[:, normal] & ~positive
    else:
        warnings.warn("rsna_pneumonia: stage_2_detailed_class_info.csv not found, so every "
                      "Target 0 image counts as normal (including 'No Lung Opacity / Not "
                      "Normal')", stacklevel=2)
        negative = (labels[:, p] == 0) & label_mask[:, p]
    return positive, positive | negative
