"""The evaluation tasks, each a function of embedded data -> flat ``{metric: number}``.

Names are stable (documented in the README):
  zeroshot/auroc/<class>, zeroshot/auroc_mean (+ _ci_low/_ci_high), zeroshot/accuracy_single_label
    (the headline: CheXzero positive/negative prompt ensembles), zeroshot/auroc_ensemble/<class>,
    zeroshot/accuracy_single_label_{normal,findings} (the headline accuracy on the normal and
    on the abnormal single-label images), zeroshot/accuracy_which_finding,
    zeroshot/margin_first_component, zeroshot/auroc_mean_ensemble,
    zeroshot/accuracy_single_label_ensemble (positive prompts only), zeroshot/auroc_mean_max,
    zeroshot/classes, zeroshot/classes_skipped
  retrieval/image_to_report_R@K, retrieval/report_to_image_R@K, .../median_rank
  regions/region_to_caption_R@K, regions/region_to_caption_semantic_R@K,
  regions/caption_to_region_R@K, regions/caption_to_region_semantic_R@K
  hard_negatives/accuracy/<kind>, hard_negatives/accuracy_mean
  lesion_retrieval/R@K, lesion_retrieval/semantic_R@K (= regions/caption_to_region[_semantic]_R@K)
The crop baseline's region scores use the prefixes regions_crop/, hard_negatives_crop/ and
lesion_retrieval_crop/; a protocol on a real dataset puts its name in front (chexpert_test/...).

The classification and ranking tasks take an optional ``raw`` dict that receives what the report
plots (per-class scores for ROC curves, per-query ranks for recall@K curves); the returned metrics
stay flat numbers. Phrase grounding is in ``grounding``, the real-data protocols in ``protocols``.
"""

from __future__ import annotations

import numpy as np

from rmc_jax.data.captions import PERTURBATION_TYPES
from rmc_jax.data.schema import is_no_finding
from rmc_jax.evaluate import metrics as M

NORMAL_PROMPTS = ("no acute cardiopulmonary process", "the lungs are clear",
                  "normal chest radiograph", "no focal consolidation, effusion or pneumothorax")
FINDING_TEMPLATES = ("{}", "there is {}", "findings consistent with {}", "{} is present")
NEGATIVE_TEMPLATES = ("no {}", "there is no {}", "no evidence of {}")
# Findings worded as radiology reports word them, on both sides: a report says "heart size is
# normal", not "no cardiomegaly", so the templates' negatives miss how the reports negate.
# Keyed by the class name in lower case with spaces; other classes get the templates.
REPORT_PHRASES = {
    "atelectasis": (
        ("atelectasis", "there is atelectasis", "subsegmental atelectasis",
         "linear atelectasis", "lobar collapse"),
        ("no atelectasis", "there is no atelectasis", "no evidence of atelectasis")),
    "cardiomegaly": (
        ("cardiomegaly", "the heart is enlarged", "enlarged cardiac silhouette",
         "the heart size is enlarged"),
        ("heart size is normal", "the heart is normal in size",
         "the cardiac silhouette is within normal limits", "no cardiomegaly")),
    "consolidation": (
        ("consolidation", "focal consolidation", "airspace opacity", "airspace disease"),
        ("no focal consolidation", "no airspace opacity",
         "no consolidation to suggest pneumonia")),
    "edema": (
        ("pulmonary edema", "interstitial edema", "pulmonary vascular congestion", "edema"),
        ("no pulmonary edema", "pulmonary vascularity is normal",
         "no pulmonary vascular congestion")),
    "mass": (
        ("mass", "lung mass", "pulmonary mass", "there is a mass"),
        ("no pulmonary mass", "no suspicious mass", "no mass is identified")),
    "nodule": (
        ("nodule", "pulmonary nodule", "nodular opacity", "there is a nodule"),
        ("no pulmonary nodules", "no suspicious pulmonary nodules", "no focal nodule")),
    "pleural effusion": (
        ("pleural effusion", "effusion", "blunting of the costophrenic angle",
         "there is a pleural effusion"),
        ("no pleural effusion", "there is no pleural effusion",
         "the costophrenic angles are sharp")),
    "pneumothorax": (
        ("pneumothorax", "there is a pneumothorax", "apical pneumothorax",
         "visible pleural line"),
        ("no pneumothorax", "there is no pneumothorax", "no evidence of pneumothorax")),
}


def template_prompts(label_names) -> dict[str, dict[str, list[str]]]:
    """{class: {'positive': [...], 'negative': [...]}} from templates around the class name
    (the defaults before ``REPORT_PHRASES``). 'No Finding', in any spelling
    (``schema.is_no_finding``), gets its own prompts (the template 'no {}' would invert it) and,
    as negatives, prompts of any finding."""
    prompts = {}
    findings = [n for n in label_names if not is_no_finding(n)]
    for name in label_names:
        if is_no_finding(name):
            positive = list(NORMAL_PROMPTS)
            negative = [f.replace("_", " ").lower() for f in findings] or ["abnormal"]
        else:
            words = name.replace("_", " ").lower()
            positive = [t.format(words) for t in FINDING_TEMPLATES]
            negative = [t.format(words) for t in NEGATIVE_TEMPLATES]
        prompts[name] = {"positive": positive, "negative": negative}
    return prompts


def default_prompts(label_names) -> dict[str, dict[str, list[str]]]:
    """``template_prompts``, with the classes that ``REPORT_PHRASES`` words (never 'No
    Finding') taking its report phrasings on both sides."""
    prompts = template_prompts(label_names)
    for name in label_names:
        phrased = REPORT_PHRASES.get(name.replace("_", " ").lower())
        if phrased is not None:
            prompts[name] = {"positive": list(phrased[0]), "negative": list(phrased[1])}
    return prompts


def _normalise(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _class_prompts(name: str, spec, label_names) -> dict[str, list[str]]:
    """A class's {'positive': [...], 'negative': [...]}: a user's plain list (or a dict without
    negatives) sets the positive prompts, the negatives stay the defaults."""
    if isinstance(spec, (list, tuple)):
        spec = {"positive": list(spec)}
    negative = spec.get("negative") or default_prompts(label_names)[name]["negative"]
    return {"positive": list(spec["positive"]), "negative": list(negative)}


def single_label_accuracy(scores, labels, label_mask, among=None):
    """Accuracy of argmax(scores) over classes on the images with exactly one positive class
    and every class known (and, with ``among`` [C] bool, whose positive class is one of
    those); None when there is no such image."""
    single = (labels.sum(1) == 1) & label_mask.all(1)
    if among is not None:
        single &= (labels[:, np.asarray(among, bool)] > 0).any(1)
    if not single.any():
        return None
    predicted = scores[single].argmax(1)
    return float(np.mean(labels[single][np.arange(single.sum()), predicted] == 1))


def single_label_confusion(scores, labels, label_mask):
    """[C, C] counts of (true class, argmax class) on the images that
    ``single_label_accuracy`` scores: its diagonal over its sum is that accuracy."""
    single = (labels.sum(1) == 1) & label_mask.all(1)
    counts = np.zeros((labels.shape[1],) * 2, np.int64)
    np.add.at(counts, (labels[single].argmax(1), scores[single].argmax(1)), 1)
    return counts


def first_component_share(margins):
    """Share of the variance of [N, C] per-class scores across images that their first
    principal component holds: 1.0 when every class's score is one axis, 1/C when the classes
    vary independently with equal spread; None for fewer than two images or classes, or no
    variance."""
    if margins.shape[0] < 2 or margins.shape[1] < 2:
        return None
    variances = np.linalg.svd(margins - margins.mean(0), compute_uv=False) ** 2
    return float(variances[0] / variances.sum()) if variances.sum() > 0 else None


def zero_shot(image_emb, labels, label_mask, label_names, embed_texts, prompts=None,
              temperature=0.07, bootstrap: int = 200, *, prefix: str = "zeroshot",
              raw: dict | None = None) -> dict:
    """Zero-shot multi-label classification from prompt embeddings.

    Headline, CheXzero's protocol with prompt ensembles on both sides: per class, the image's
    cosine similarities to the normalised mean embedding of the class's positive prompts and to
    that of its negative prompts, softmax over the pair at ``temperature`` -> p(positive).
    Reports use most findings only in negations ("no pleural effusion"), so a positive prompt
    alone lands near normal images; the negative prompts cancel that. Metrics:
    ``<prefix>/auroc/<class>`` and ``<prefix>/auroc_mean`` of p(positive) (bootstrap 95%
    interval ``_ci_low``/``_ci_high``), ``<prefix>/accuracy_single_label``: argmax of p(positive)
    over the classes on images with exactly one positive class (every class known), and
    where a 'No Finding' class is scored, the same accuracy on the images whose one positive
    class is it (``_normal``) and on those whose one positive class is a finding
    (``_findings``); ``<prefix>/accuracy_which_finding``, on the latter images, the argmax
    over the finding classes alone (is the finding named right, once there is one), and
    ``<prefix>/margin_first_component``, the share of the variance of the finding classes'
    margins (positive minus negative prompt similarity; every class's where no 'No Finding' is
    scored) across the images held by their first principal component
    (``first_component_share``; near 1: the classes answer one question, abnormal or not, and
    the argmax among them follows each class's loading on that axis).
    Secondary: the positive-prompt ensemble (image . mean positive prompt embedding, open_clip's
    classifier) ``<prefix>/auroc_ensemble/<class>``, ``<prefix>/auroc_mean_ensemble``,
    ``<prefix>/accuracy_single_label_ensemble``; the max over positive prompts
    ``<prefix>/auroc_mean_max``.

    A class needs a known positive and a known negative example for an AUROC (label sets that
    mark only present findings, like MS-CXR's, have none): classes without are left out of
    every AUROC, counted in ``<prefix>/classes_skipped`` and named, with the reason, in
    ``raw['notes']``; ``<prefix>/classes`` counts the scored ones. ``embed_texts(list[str]) ->
    [n, E]`` embeds prompts; ``prompts`` is {class: [...]} (positive prompts) or {class:
    {'positive': [...], 'negative': [...]}} (defaults: ``default_prompts``).
    ``raw['roc'][prefix][class]`` receives (p(positive), labels) of the known examples of each
    scored class, ``raw['prompts'][prefix][class]`` the prompts each class was scored with,
    and ``raw['confusion'][prefix]`` the headline accuracy's confusion matrix ({'classes':
    [...], 'counts': [C, C] true x predicted}): which finding a wrong answer is.
    """
    prompts = default_prompts(label_names) if prompts is None else prompts
    results, skipped = {}, []
    scores = {"posneg": [], "ensemble": []}          # [N] per class with prompts
    margins = []                                     # [N] per class: positive - negative
    aurocs = {"posneg": [], "ensemble": [], "max": []}
    columns, scored = [], []
    curves = {}
    for c, name in enumerate(label_names):
        if prompts.get(name) is None:
            skipped.append(f"{name} (no prompts)")
            continue
        spec = _class_prompts(name, prompts[name], label_names)
        if raw is not None:
            raw.setdefault("prompts", {}).setdefault(prefix, {})[name] = spec
        positive = embed_texts(spec["positive"])
        ensemble = image_emb @ _normalise(positive.mean(0))
        negative = image_emb @ _normalise(embed_texts(spec["negative"]).mean(0))
        logits = np.stack([ensemble, negative], 1) / temperature
        logits -= logits.max(1, keepdims=True)
        posneg = np.exp(logits[:, 0]) / np.exp(logits).sum(1)
        columns.append(c)
        margins.append(ensemble - negative)
        scores["posneg"].append(posneg)
        scores["ensemble"].append(ensemble)
        known = label_mask[:, c].astype(bool)
        truth = labels[known, c] > 0
        if not truth.any() or truth.all():
            reason = ("no known label" if not known.any() else
                      "no negative example" if truth.all() else "no positive example")
            skipped.append(f"{name} ({reason})")
            continue
        scored.append(c)
        by_kind = {"posneg": posneg, "ensemble": ensemble, "max": (image_emb @ positive.T).max(1)}
        for kind, score in by_kind.items():
            aurocs[kind].append(M.auroc(score[known], truth))
        results[f"{prefix}/auroc/{name}"] = aurocs["posneg"][-1]
        results[f"{prefix}/auroc_ensemble/{name}"] = aurocs["ensemble"][-1]
        curves[name] = (posneg[known], labels[known, c])
    results[f"{prefix}/classes"] = float(len(scored))
    results[f"{prefix}/classes_skipped"] = float(len(skipped))
    if skipped:
        note(raw, prefix, f"no AUROC for {len(skipped)} of {len(label_names)} classes (an AUROC "
             f"needs a known positive and a known negative example): {', '.join(skipped)}.")
    if curves and raw is not None:
        raw.setdefault("roc", {})[prefix] = curves
    if scored:
        for kind, suffix in (("posneg", ""), ("ensemble", "_ensemble"), ("max", "_max")):
            results[f"{prefix}/auroc_mean{suffix}"] = float(np.mean(aurocs[kind]))
    if not columns:
        return results
    y, known = labels[:, columns], label_mask[:, columns].astype(bool)
    matrices = {kind: np.stack(values, 1) for kind, values in scores.items()}
    if scored and bootstrap:
        keep = [columns.index(c) for c in scored]

        def mean_auroc(score, truth, mask):
            values = [M.auroc(score[mask[:, i], i], truth[mask[:, i], i])
                      for i in range(score.shape[1])]
            finite = [v for v in values if np.isfinite(v)]
            return float(np.mean(finite)) if finite else np.nan

        low, high = M.bootstrap_ci(mean_auroc, matrices["posneg"][:, keep], y[:, keep],
                                   known[:, keep], n=bootstrap)
        results[f"{prefix}/auroc_mean_ci_low"], results[f"{prefix}/auroc_mean_ci_high"] = low, high
    normal = np.array([is_no_finding(label_names[c]) for c in columns])
    for kind, suffix in (("posneg", ""), ("ensemble", "_ensemble")):
        accuracy = single_label_accuracy(matrices[kind], y, known)
        if accuracy is not None:
            results[f"{prefix}/accuracy_single_label{suffix}"] = accuracy
            if kind == "posneg" and raw is not None:
                raw.setdefault("confusion", {})[prefix] = {
                    "classes": [label_names[c] for c in columns],
                    "counts": single_label_confusion(matrices[kind], y, known)}
    if normal.any():
        # The accuracy split by what the image shows: a classifier that calls every image
        # normal scores the normal share of the single-label images, and this shows it.
        for part, among in (("normal", normal), ("findings", ~normal)):
            accuracy = single_label_accuracy(matrices["posneg"], y, known, among)
            if accuracy is not None:
                results[f"{prefix}/accuracy_single_label_{part}"] = accuracy
        # Among the finding classes alone, on the images whose one positive class is a finding.
        findings = ~normal
        single = (y.sum(1) == 1) & known.all(1) & (y[:, findings].sum(1) == 1)
        if single.any() and findings.sum() > 1:
            named = matrices["posneg"][single][:, findings].argmax(1)
            results[f"{prefix}/accuracy_which_finding"] = float(
                np.mean(named == y[single][:, findings].argmax(1)))
    share = first_component_share(np.stack(margins, 1)[:, ~normal])
    if share is not None:
        results[f"{prefix}/margin_first_component"] = share
    return results


def note(raw: dict | None, key: str, text: str) -> None:
    """Say in the report (its Notes) what ``key``'s metrics leave out and why."""
    if raw is not None:
        raw.setdefault("notes", []).append(f"`{key}`: {text}")


def image_report_retrieval(image_emb, report_emb, report_key, ks=(1, 5, 10), *,
                           has_report=None, prefix: str = "retrieval",
                           raw: dict | None = None) -> dict:
    """Image <-> report retrieval; images sharing a report text all count as its match.

    image_emb, report_emb [N, E]; report_key [N] (equal for equal texts); has_report [N] bool.
    Examples without report text are left out: an empty report describes nothing (and every
    empty report would "match" every other). ``<prefix>/examples`` and
    ``<prefix>/left_out_no_report`` count them; with fewer than 2 examples left there is
    nothing to rank, the recall metrics are absent and ``raw['notes']`` says why.
    ``raw['ranks']['<prefix>/<direction>']`` receives each query's rank.
    """
    keep = (np.ones(len(image_emb), bool) if has_report is None
            else np.asarray(has_report, bool))
    results = {f"{prefix}/examples": float(keep.sum()),
               f"{prefix}/left_out_no_report": float((~keep).sum())}
    if keep.sum() < 2:
        note(raw, prefix, f"not computed: {int(keep.sum())} of the {len(keep)} examples have "
                          "report text (image-report retrieval ranks at least 2)")
        return results
    image_emb, report_emb, report_key = image_emb[keep], report_emb[keep], report_key[keep]
    same = report_key[:, None] == report_key[None, :]                    # [N, N]
    similarity = image_emb @ report_emb.T
    for direction, sim in (("image_to_report", similarity), ("report_to_image", similarity.T)):
        ranks = M.ranks_of_positives(sim, same)
        if raw is not None:
            raw.setdefault("ranks", {})[f"{prefix}/{direction}"] = ranks
        for k, value in M.recall_at_k(ranks, ks).items():
            results[f"{prefix}/{direction}_R@{k}"] = value
        results[f"{prefix}/{direction}_median_rank"] = float(np.median(ranks))
    return results


def region_matching(data, ks=(1, 5, 10), *, regions_key: str = "regions",
                    prefix: str = "regions", raw: dict | None = None) -> dict:
    """Region <-> caption matching over all valid test regions.

    Exact: the region's own caption (or an identical sentence). Semantic: any caption whose
    region has the same finding, side, zone and size (unknown attributes match unknown ones).
    caption -> region is the fine-grained lesion-description retrieval: each region caption
    queries all (image, region) pairs of the split (see ``lesion_retrieval``).
    ``regions_key`` picks the region embeddings ('regions': the region head; 'regions_crop':
    the crop baseline). ``raw['ranks']['<prefix>/<direction>[_semantic]']`` receives the ranks.
    """
    mask = data["box_mask"].astype(bool)
    regions, captions = data[regions_key][mask], data["captions"][mask]
    if not len(regions):
        return {}
    similarity = regions @ captions.T
    exact = data["caption_hash"][mask][:, None] == data["caption_hash"][mask][None, :]
    attrs = np.stack([data[n][mask] for n in ("finding_ids", "side_ids", "zone_ids",
                                             "size_ids")], 1)
    known = (attrs[:, 0] >= 0)
    semantic = np.all(attrs[:, None, :] == attrs[None, :, :], axis=-1) & known[:, None]
    semantic |= exact
    results = {}
    for name, positive in (("", exact), ("_semantic", semantic)):
        for direction, sim, pos in (("region_to_caption", similarity, positive),
                                    ("caption_to_region", similarity.T, positive.T)):
            ranks = M.ranks_of_positives(sim, pos)
            if raw is not None:
                raw.setdefault("ranks", {})[f"{prefix}/{direction}{name}"] = ranks
            for k, value in M.recall_at_k(ranks, ks).items():
                results[f"{prefix}/{direction}{name}_R@{k}"] = value
    return results


def lesion_retrieval(region_results: dict, regions_prefix: str = "regions",
                     prefix: str = "lesion_retrieval") -> dict:
    """Fine-grained lesion description retrieval, text -> (image, region) among all regions of
    the split, R@K: the caption -> region scores of ``region_matching`` under their own names
    (``<prefix>/R@K``, ``<prefix>/semantic_R@K``), not computed a second time."""
    results = {}
    head = f"{regions_prefix}/caption_to_region"
    for key, value in region_results.items():
        if key.startswith(head + "_R@"):
            results[f"{prefix}/R@{key.rsplit('@', 1)[1]}"] = value
        elif key.startswith(head + "_semantic_R@"):
            results[f"{prefix}/semantic_R@{key.rsplit('@', 1)[1]}"] = value
    return results


def hard_negative_accuracy(data, *, regions_key: str = "regions",
                           prefix: str = "hard_negatives") -> dict:
    """How often a region prefers its true caption over each kind of perturbed caption."""
    mask = data["box_mask"].astype(bool)
    positive = np.einsum("nre,nre->nr", data[regions_key], data["captions"])
    negative = np.einsum("nre,nrke->nrk", data[regions_key], data["negatives"])
    correct = positive[..., None] > negative
    valid = data["neg_valid"].astype(bool) & mask[..., None]
    results, values = {}, []
    for index, kind in enumerate(PERTURBATION_TYPES):
        chosen = valid & (data["neg_kind"] == index)
        if chosen.any():
            results[f"{prefix}/accuracy/{kind}"] = float(correct[chosen].mean())
            values.append(results[f"{prefix}/accuracy/{kind}"])
    if values:
        results[f"{prefix}/accuracy_mean"] = float(np.mean(values))
    return results


def binary_zero_shot(image_emb, positive, known, embed_texts, positive_prompts,
                     negative_prompts, temperature=0.07, *, prefix: str, class_name: str,
                     raw: dict | None = None) -> dict:
    """Two-class zero-shot classification (e.g. pneumonia vs normal).

    Each class is the normalised mean of its prompt embeddings; p(positive) is the softmax of
    the two cosine similarities at ``temperature``. Reports ``<prefix>/auroc`` (of p),
    ``<prefix>/accuracy`` (p > 0.5) and the counts ``<prefix>/positives``, ``<prefix>/negatives``
    over the ``known`` [N] examples; ``positive`` [N] bool is the truth.
    ``raw['roc'][prefix][class_name]`` receives (p, truth).
    """
    known = np.asarray(known, bool)
    truth = np.asarray(positive, bool)[known]
    classes = np.stack([_normalise(embed_texts(list(positive_prompts)).mean(0)),
                        _normalise(embed_texts(list(negative_prompts)).mean(0))])
    logits = image_emb[known] @ classes.T / temperature                  # [n, 2]
    logits -= logits.max(1, keepdims=True)
    probability = np.exp(logits[:, 0]) / np.exp(logits).sum(1)
    if raw is not None:
        raw.setdefault("roc", {}).setdefault(prefix, {})[class_name] = (probability, truth)
    return {f"{prefix}/auroc": M.auroc(probability, truth),
            f"{prefix}/accuracy": float(np.mean((probability > 0.5) == truth))
            if len(truth) else float("nan"),
            f"{prefix}/positives": float(truth.sum()), f"{prefix}/negatives": float((~truth).sum())}
