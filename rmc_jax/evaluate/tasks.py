"""The evaluation tasks, each a function of embedded data -> flat ``{metric: number}``.

Names are stable (documented in the README):
  zeroshot/auroc/<class>, zeroshot/auroc_mean (+ _ci_low/_ci_high), zeroshot/auroc_mean_max,
  zeroshot/auroc_mean_posneg, zeroshot/accuracy_single_label
  retrieval/image_to_report_R@K, retrieval/report_to_image_R@K, .../median_rank
  regions/region_to_caption_R@K, regions/region_to_caption_semantic_R@K,
  regions/caption_to_region_R@K, regions/caption_to_region_semantic_R@K
  hard_negatives/accuracy/<kind>, hard_negatives/accuracy_mean
"""

from __future__ import annotations

import numpy as np

from rmc_jax.data.captions import PERTURBATION_TYPES
from rmc_jax.evaluate import metrics as M

NO_FINDING = ("no_finding", "No Finding")
NORMAL_PROMPTS = ("no acute cardiopulmonary process", "the lungs are clear",
                  "normal chest radiograph", "no focal consolidation, effusion or pneumothorax")
FINDING_TEMPLATES = ("{}", "there is {}", "findings consistent with {}", "{} is present")
NEGATIVE_TEMPLATES = ("no {}", "there is no {}", "no evidence of {}")


def default_prompts(label_names) -> dict[str, dict[str, list[str]]]:
    """{class: {'positive': [...], 'negative': [...]}}. 'No Finding' gets its own prompts (the
    template 'no {}' would invert it) and, as negatives, prompts of any finding."""
    prompts = {}
    findings = [n for n in label_names if n not in NO_FINDING]
    for name in label_names:
        if name in NO_FINDING:
            positive = list(NORMAL_PROMPTS)
            negative = [f.replace("_", " ").lower() for f in findings] or ["abnormal"]
        else:
            words = name.replace("_", " ").lower()
            positive = [t.format(words) for t in FINDING_TEMPLATES]
            negative = [t.format(words) for t in NEGATIVE_TEMPLATES]
        prompts[name] = {"positive": positive, "negative": negative}
    return prompts


def _normalise(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def zero_shot(image_emb, labels, label_mask, label_names, embed_texts, prompts=None,
              temperature=0.07, bootstrap: int = 200) -> dict:
    """Zero-shot multi-label classification from prompt embeddings.

    Scores per class: (a) image . mean of its prompt embeddings (ensemble) and the max over
    prompts; (b) CheXzero: softmax over (positive, negative) prompt similarities.
    ``embed_texts(list[str]) -> [n, E]`` embeds prompts; ``prompts`` is {class: [...]} or the
    {class: {'positive': [...], 'negative': [...]}} form (defaults: ``default_prompts``).
    """
    prompts = default_prompts(label_names) if prompts is None else prompts
    results, ensemble_scores = {}, []
    per_class = {"ensemble": [], "max": [], "posneg": []}
    for c, name in enumerate(label_names):
        spec = prompts.get(name)
        if spec is None:
            continue
        if isinstance(spec, (list, tuple)):
            spec = {"positive": list(spec), "negative": []}
        positive = embed_texts(spec["positive"])
        sims = image_emb @ positive.T                                     # [N, P]
        ensemble = image_emb @ _normalise(positive.mean(0))
        scores = {"ensemble": ensemble, "max": sims.max(1)}
        if spec.get("negative"):
            negative = _normalise(embed_texts(spec["negative"]).mean(0))
            logits = np.stack([ensemble, image_emb @ negative], 1) / temperature
            logits -= logits.max(1, keepdims=True)
            scores["posneg"] = np.exp(logits[:, 0]) / np.exp(logits).sum(1)
        known = label_mask[:, c].astype(bool)
        for kind, score in scores.items():
            value = M.auroc(score[known], labels[known, c])
            per_class[kind].append(value)
            if kind == "ensemble":
                results[f"zeroshot/auroc/{name}"] = value
        ensemble_scores.append((c, ensemble))
    means = {k: float(np.nanmean(v)) if v else float("nan") for k, v in per_class.items()}
    results["zeroshot/auroc_mean"] = means["ensemble"]
    results["zeroshot/auroc_mean_max"] = means["max"]
    results["zeroshot/auroc_mean_posneg"] = means["posneg"]
    if ensemble_scores and bootstrap:
        columns = [c for c, _ in ensemble_scores]
        score_matrix = np.stack([s for _, s in ensemble_scores], 1)

        def mean_auroc(scores, y, known):
            values = [M.auroc(scores[known[:, i], i], y[known[:, i], i])
                      for i in range(scores.shape[1])]
            return np.nanmean(values) if np.isfinite(values).any() else np.nan

        low, high = M.bootstrap_ci(mean_auroc, score_matrix, labels[:, columns],
                                   label_mask[:, columns].astype(bool), n=bootstrap)
        results["zeroshot/auroc_mean_ci_low"], results["zeroshot/auroc_mean_ci_high"] = low, high
        single = (labels[:, columns].sum(1) == 1) & label_mask[:, columns].all(1)
        if single.any():
            predicted = score_matrix[single].argmax(1)
            results["zeroshot/accuracy_single_label"] = float(
                np.mean(labels[single][:, columns][np.arange(single.sum()), predicted] == 1))
    return results


def image_report_retrieval(image_emb, report_emb, report_key, ks=(1, 5, 10)) -> dict:
    """Image <-> report retrieval; images sharing a report text all count as its match."""
    same = report_key[:, None] == report_key[None, :]                    # [N, N]
    similarity = image_emb @ report_emb.T
    results = {}
    for direction, sim in (("image_to_report", similarity), ("report_to_image", similarity.T)):
        ranks = M.ranks_of_positives(sim, same)
        for k, value in M.recall_at_k(ranks, ks).items():
            results[f"retrieval/{direction}_R@{k}"] = value
        results[f"retrieval/{direction}_median_rank"] = float(np.median(ranks))
    return results


def region_matching(data, ks=(1, 5, 10)) -> dict:
    """Region <-> caption matching over all valid test regions.

    Exact: the region's own caption (or an identical sentence). Semantic: any caption whose
    region has the same finding, side, zone and size (unknown attributes match unknown ones). caption -> region
    is the fine-grained lesion-description retrieval: text -> (image, region)."""
    mask = data["box_mask"].astype(bool)
    regions, captions = data["regions"][mask], data["captions"][mask]
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
            for k, value in M.recall_at_k(ranks, ks).items():
                results[f"regions/{direction}{name}_R@{k}"] = value
    return results


def hard_negative_accuracy(data) -> dict:
    """How often a region prefers its true caption over each kind of perturbed caption."""
    mask = data["box_mask"].astype(bool)
    positive = np.einsum("nre,nre->nr", data["regions"], data["captions"])
    negative = np.einsum("nre,nrke->nrk", data["regions"], data["negatives"])
    correct = positive[..., None] > negative
    valid = data["neg_valid"].astype(bool) & mask[..., None]
    results, values = {}, []
    for index, kind in enumerate(PERTURBATION_TYPES):
        chosen = valid & (data["neg_kind"] == index)
        if chosen.any():
            results[f"hard_negatives/accuracy/{kind}"] = float(correct[chosen].mean())
            values.append(results[f"hard_negatives/accuracy/{kind}"])
    if values:
        results["hard_negatives/accuracy_mean"] = float(np.mean(values))
    return results
