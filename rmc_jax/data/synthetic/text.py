"""A study's text: a MIMIC-style report and one plain caption per region.

``generate_text(case, rng)`` -> ``(report, captions)``. The report has FINDINGS and IMPRESSION
sections (sometimes EXAMINATION / INDICATION / COMPARISON before them): one positive sentence per
finding (``sentences``), negations and normal statements about absent findings (never about a
present one), fillers, grouped lungs / pleura / heart / other and shuffled within the groups. A
caption names its region's side explicitly, a plain zone word, the finding and often its size
("small left apical pneumothorax"), so that the hard-negative perturbations can find them.
"""

from __future__ import annotations

import numpy as np

from rmc_jax.data.synthetic.findings import Case, Region, case_regions
from rmc_jax.data.synthetic.sentences import (PHRASES, choose, impression_item,
                                              positive_sentence, size_word)
from rmc_jax.data.synthetic.vocabulary import RENDERED_FINDINGS

NEGATIONS = PHRASES["negations"]            # finding -> sentences stating its absence
NEGATED_NAMES = PHRASES["negated_names"]    # finding -> its name in a list of negations
NORMAL_IMPRESSIONS = PHRASES["normal_impressions"]
INDICATIONS = PHRASES["indications"]
CAPTION_ZONE_NOUNS = PHRASES["caption_zone_nouns"]          # "in the {side} ..."
CAPTION_ZONE_ADJECTIVES = PHRASES["caption_zone_adjectives"]  # "{side} ... {finding}"
LUNG_FINDINGS = ("nodule", "mass", "consolidation", "atelectasis", "edema", "pneumothorax")
# How often an absent finding is negated explicitly (common for the findings a report checks).
NEGATION_PROBABILITY = {"pneumothorax": 0.7, "pleural_effusion": 0.7, "consolidation": 0.6,
                        "edema": 0.35, "cardiomegaly": 0.75, "nodule": 0.15, "mass": 0.1,
                        "atelectasis": 0.05}


def _negative_statements(rng, present: set, case: Case) -> list:
    """Negated / normal statements about absent findings (never about a present one)."""
    absent = [n for n in RENDERED_FINDINGS if n not in present]
    out = []
    # combined 'No focal consolidation, pleural effusion, or pneumothorax.'
    combinable = [n for n in ("consolidation", "pleural_effusion", "pneumothorax", "edema")
                  if n in absent]
    used = set()
    if len(combinable) >= 2 and rng.random() < 0.6:
        k = int(rng.integers(2, len(combinable) + 1))
        idx = sorted(rng.choice(len(combinable), size=k, replace=False))
        names = [combinable[j] for j in idx]
        words = [choose(rng, NEGATED_NAMES[n]) for n in names]
        if len(words) == 2:
            lst = f"{words[0]} or {words[1]}"
        else:
            lst = ", ".join(words[:-1]) + f"{choose(rng, (',', ''))} or {words[-1]}"
        out.append(choose(rng, (f"No {lst}.", f"There is no {lst}.", f"No {lst} is seen.",
                                f"No evidence of {lst}.")))
        used.update(names)
    hilar_ok = not any(f.zone == "perihilar" for f in case.findings)
    for n in absent:
        if n in used:
            continue
        if rng.random() < NEGATION_PROBABILITY[n]:
            opts = [o for o in NEGATIONS[n] if hilar_ok or "hilar" not in o]
            out.append(choose(rng, opts))
    negated = " ".join(out).lower()
    if "nodule" in absent and "mass" in absent and "nodul" not in negated \
            and "mass" not in negated and rng.random() < 0.15:
        out.append(choose(rng, ("No pulmonary nodules or masses.",
                                "No suspicious nodules or masses.")))
    # side-specific negation of a one-sided pleural finding ('No left effusion.')
    for f in case.findings:
        if f.name in ("pleural_effusion", "pneumothorax") and f.side in ("right", "left") \
                and rng.random() < 0.25:
            other = "left" if f.side == "right" else "right"
            noun = "effusion" if f.name == "pleural_effusion" else "pneumothorax"
            out.append(f"No {other} {noun}.")
    return out


def generate_text(case: Case, rng: np.random.Generator):
    """(report, captions) for a case; captions align with ``case_regions(case)``."""
    present = {f.name for f in case.findings}
    lung_findings = present & set(LUNG_FINDINGS)
    positives = [(positive_sentence(rng, f), f.name) for f in case.findings]
    negatives = _negative_statements(rng, present, case)

    fillers = []
    if not lung_findings:
        if "pleural_effusion" not in present:
            fillers.append(choose(rng, ("The lungs are clear.", "Lungs are clear bilaterally.",
                                        "The lungs are well expanded and clear.",
                                        "Clear lungs.",
                                        "The lungs are clear without focal abnormality.")))
        elif rng.random() < 0.6:
            fillers.append(choose(rng, ("The lungs are otherwise clear.",
                                        "Lungs are otherwise clear.")))
    elif "edema" not in present and rng.random() < 0.35:
        fillers.append(choose(rng, ("The lungs are otherwise clear.",
                                    "Elsewhere, the lungs are clear.")))
    if rng.random() < 0.5 and not any(f.zone == "perihilar" for f in case.findings):
        fillers.append(choose(rng, ("The mediastinal and hilar contours are unremarkable.",
                                    "Mediastinal contours are normal.",
                                    "The hilar contours are within normal limits.")))
    if rng.random() < 0.4:
        fillers.append(choose(rng, ("No acute osseous abnormality.",
                                    "Osseous structures are intact.",
                                    "The visualized osseous structures are unremarkable.",
                                    "No free air below the diaphragm.",
                                    "The visualized upper abdomen is unremarkable.")))

    # order: lungs, pleura, heart, other; shuffled within each group, sometimes across
    def group(sentence_or_name):
        n = sentence_or_name
        if n in ("pleural_effusion", "pneumothorax"):
            return 1
        if n == "cardiomegaly":
            return 2
        return 0

    items = [(group(n), s) for s, n in positives]
    for s in negatives:
        low = s.lower()
        g = 1 if ("effusion" in low or "pneumothorax" in low or "costophrenic" in low) else \
            2 if ("heart" in low or "cardiac" in low or "cardiomediastinal" in low) else 0
        items.append((g, s))
    items += [(3 if ("osseous" in s.lower() or "abdomen" in s.lower() or "free air" in s.lower())
               else 0 if "lung" in s.lower() else 2, s) for s in fillers]
    keys = rng.random(len(items))
    if rng.random() < 0.8:
        keys = keys + np.array([g for g, _ in items], dtype=np.float64) * 2.0
    sentences = [items[j][1] for j in np.argsort(keys, kind="stable")]
    findings_text = " ".join(sentences)

    if case.findings:
        imp = [impression_item(rng, f) for f in case.findings]
        order = rng.permutation(len(imp)) if rng.random() < 0.3 else np.arange(len(imp))
        imp = [imp[j] for j in order]
        if len(imp) > 1 and rng.random() < 0.5:
            impression = " ".join(f"{k + 1}. {s}" for k, s in enumerate(imp))
        else:
            impression = " ".join(imp)
        if "pneumothorax" not in present and rng.random() < 0.2:
            impression += " No pneumothorax."
    else:
        impression = choose(rng, NORMAL_IMPRESSIONS)

    parts = []
    if rng.random() < 0.3:
        parts.append("EXAMINATION: " + choose(rng, ("Chest radiograph, PA view.", "CHEST (PA)",
                                                    "Chest PA.",
                                                    "Single frontal view of the chest.")))
        parts.append("INDICATION: " + choose(rng, INDICATIONS))
        parts.append("COMPARISON: " + choose(rng, ("None.", "None available.", "___.")))
    if rng.random() < 0.15:
        findings_text = choose(rng, ("PA view of the chest provided. ",
                                     "Frontal view of the chest. ",
                                     "Single PA radiograph of the chest. ")) + findings_text
    parts.append("FINDINGS: " + findings_text)
    parts.append("IMPRESSION: " + impression)
    report = choose(rng, ("\n", "\n\n", " ")).join(parts)
    captions = tuple(region_caption(rng, r) for r in case_regions(case))
    return report, captions


def region_caption(rng, r: Region) -> str:
    """The caption of region ``r``: explicit side word, plain zone word (``CAPTION_ZONE_*``),
    canonical finding word and, three times in four, a size word."""
    side, zone, size, name = r.side, r.zone, r.size, r.finding
    use_size = rng.random() < 0.75
    if name == "cardiomegaly":
        sev = size_word(rng, size, "cardiac")
        return choose(rng, (f"{sev} cardiomegaly", f"{sev} enlargement of the cardiac silhouette",
                            "cardiomegaly", f"{sev} cardiomegaly", "enlarged cardiac silhouette"))
    if name == "edema":
        sev = size_word(rng, size, "severity")
        zw = {"perihilar": "perihilar", "basal": "basilar",
              "diffuse": "diffuse"}.get(zone, "perihilar")
        return choose(rng, (f"{sev} bilateral {zw} edema", f"bilateral {zw} pulmonary edema",
                            f"{sev} pulmonary edema, bilateral {zw}",
                            f"{sev} bilateral {zw} pulmonary edema"))
    noun = {"nodule": ("nodule", "pulmonary nodule", "nodule"),
            "mass": ("mass", "mass", "lung mass"),
            "consolidation": ("consolidation", "airspace opacity", "airspace disease",
                              "consolidation", "opacity"),
            "atelectasis": ("atelectasis",),
            "pleural_effusion": ("pleural effusion", "effusion", "pleural effusion"),
            "pneumothorax": ("pneumothorax",)}[name]
    noun = choose(rng, noun)
    if name == "atelectasis" and size == "small" and rng.random() < 0.5:
        noun = choose(rng, ("plate-like atelectasis", "linear atelectasis",
                            "subsegmental atelectasis"))
    if name == "atelectasis" and size == "large" and rng.random() < 0.4:
        noun = "lobar collapse" if rng.random() < 0.5 else "lobar atelectasis"
    kind = "severity" if name in ("consolidation", "atelectasis") and rng.random() < 0.5 else \
        ("effusion" if name == "pleural_effusion" else "lesion")
    sw = size_word(rng, size, kind)
    if kind == "lesion" and size == "moderate" and name in ("nodule", "mass"):
        sw = choose(rng, ("moderate", "moderate-sized", "medium"))
    sw = (sw + " ") if use_size else ""
    if name == "pleural_effusion":
        return choose(rng, (f"{sw}{side} {noun}", f"{sw}{side} {noun} at the {side} base",
                            f"{sw}{side} {noun}", f"{sw}{side} basal {noun}",
                            f"{sw}{noun} in the {side} pleural space"))
    if name == "pneumothorax":
        zw = "apical" if zone == "apical" else "upper zone"
        return choose(rng, (f"{sw}{side} {zw} {noun}", f"{sw}{side} {noun}",
                            f"{sw}{noun} at the {side} apex" if zone == "apical" else
                            f"{sw}{noun} in the {side} upper zone"))
    zn = choose(rng, CAPTION_ZONE_NOUNS[zone])
    za = choose(rng, CAPTION_ZONE_ADJECTIVES[zone])
    if zone == "retrocardiac":
        return choose(rng, (f"{sw}{side} retrocardiac {noun}",
                            f"{sw}{noun} in the {side} retrocardiac region",
                            f"{sw}retrocardiac {noun} in the {side} lower lobe"))
    return choose(rng, (f"{sw}{side} {za} {noun}", f"{sw}{noun} in the {side} {zn}",
                        f"{sw}{side} {za} {noun}", f"{sw}{noun} at the {side} {zn}"
                        if zone in ("basal", "apical") else f"{sw}{noun} in the {side} {zn}"))

