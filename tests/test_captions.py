"""Hard negative captions: every negative really changes the meaning, and in the right way."""

import json
import re
import time

import numpy as np
import pytest

from fixtures import fingerprints
from rmc_jax.data import captions, schema
from rmc_jax.data.captions import (PERTURBATION_TYPES, HardNegative, hard_negatives,
                                   parse_caption, perturbations)

# Region captions in the styles the sources produce.
SYNTHETIC = ["small nodule in the right upper zone", "moderate left pleural effusion",
             "bilateral perihilar edema", "enlarged cardiac silhouette",
             "large mass in the left lower zone", "tiny right apical pneumothorax"]
MS_CXR = ["Right lower lobe consolidation", "small left apical pneumothorax",
          "Left retrocardiac opacity", "Bilateral pleural effusions, left greater than right",
          "Right middle lobe pneumonia", "Lingular opacity", "Bibasilar atelectasis",
          "Mildly enlarged cardiac silhouette", "Small to moderate right pleural effusion",
          "RLL consolidation", "left-sided pleural effusion", "Patchy opacities in both lungs"]
IMAGENOME = ["There is mild right basilar atelectasis.",
             "Increased opacity in the left lower lobe concerning for pneumonia.",
             "No pneumothorax is seen.", "There is a left effusion.",
             "The heart is mildly enlarged.", "There are bilateral pleural effusions.",
             "Atelectasis at the lung bases.", "Opacity in the lingula",
             "Right apical pneumothorax is no longer seen.", "No evidence of pneumothorax.",
             "A small right pleural effusion is present.",
             "Blunting of the left costophrenic angle",
             "Nodular opacity projecting over the left upper lung", "No large pleural effusion."]
# Free report wording (MIMIC / IU style).
REPORT = ["Left greater than right pleural effusions",
          "Small bilateral pleural effusions are present.",
          "Opacity at the right base, likely atelectasis", "Multiple bilateral pulmonary nodules",
          "Increased interstitial markings in both lower lungs", "moderate-sized right effusion",
          "Right-sided PICC line terminates in the SVC", "Consolidation in the RML",
          "LEFT LOWER LOBE CONSOLIDATION", "Biapical pleural thickening", "Right hilar mass",
          "No right pneumothorax. Small left effusion.", "Mild to moderate pulmonary edema"]
ALL = SYNTHETIC + MS_CXR + IMAGENOME + REPORT
ATTRIBUTE = {"laterality": "side", "zone": "zone", "finding": "finding", "negation": "negated",
             "size": "size"}


def norm(text):
    return " ".join(text.lower().split())


def rng(seed=0):
    return np.random.default_rng(seed)


def by_kind(caption, kind, seed=0):
    return [h.text for h in hard_negatives(caption, 50, rng(seed)) if h.kind == kind]


# --- parse_caption ------------------------------------------------------------------------------
@pytest.mark.parametrize("caption, expected", [
    ("small nodule in the right upper zone", ("nodule", "right", "upper", "small", False)),
    ("moderate left pleural effusion", ("pleural_effusion", "left", None, "moderate", False)),
    ("bilateral perihilar edema", ("edema", "bilateral", "perihilar", None, False)),
    ("enlarged cardiac silhouette", ("cardiomegaly", None, None, None, False)),
    ("Right lower lobe consolidation", ("consolidation", "right", "lower", None, False)),
    ("small left apical pneumothorax", ("pneumothorax", "left", "apical", "small", False)),
    ("Left retrocardiac opacity", ("lung_opacity", "left", "retrocardiac", None, False)),
    ("Bilateral pleural effusions, left greater than right",
     ("pleural_effusion", "bilateral", None, None, False)),
    ("Pleural effusions, left greater than right",
     ("pleural_effusion", "bilateral", None, None, False)),
    ("There is mild right basilar atelectasis.", ("atelectasis", "right", "basal", "small", False)),
    ("Increased opacity in the left lower lobe concerning for pneumonia.",
     ("lung_opacity", "left", "lower", None, False)),
    ("No pneumothorax is seen.", ("pneumothorax", None, None, None, True)),
    ("Right pleural effusion is not seen.", ("pleural_effusion", "right", None, None, True)),
    ("There is no evidence of pneumothorax.", ("pneumothorax", None, None, None, True)),
    ("Pneumothorax cannot be excluded.", ("pneumothorax", None, None, None, False)),
    ("No change in the left effusion.", ("pleural_effusion", "left", None, None, False)),
    ("Right lower lobe opacity, without effusion", ("lung_opacity", "right", "lower", None, False)),
    ("RLL consolidation", ("consolidation", "right", "lower", None, False)),
    ("R lower lobe opacity", ("lung_opacity", "right", "lower", None, False)),
    ("Lingular opacity", ("lung_opacity", "left", "middle", None, False)),
    ("Atelectasis at the lung bases.", ("atelectasis", "bilateral", "basal", None, False)),
    ("Bibasilar atelectasis", ("atelectasis", "bilateral", "basal", None, False)),
    ("The heart is mildly enlarged.", ("cardiomegaly", None, None, "small", False)),
    ("The heart is not enlarged.", ("cardiomegaly", None, None, None, True)),
    ("Severe pulmonary edema", ("edema", None, None, "large", False)),
    ("Blunting of the left costophrenic angle", ("pleural_effusion", "left", "basal", None, False)),
    ("Fluid in the pleural space on the right", ("pleural_effusion", "right", None, None, False)),
    ("Small pericardial effusion", (None, None, None, "small", False)),
    ("Diffuse interstitial lung disease",
     ("interstitial_lung_disease", None, "diffuse", None, False)),
    ("Calcified granuloma in the right upper lobe",
     ("calcification", "right", "upper", None, False)),
])
def test_parse_caption_real_language(caption, expected):
    got = parse_caption(caption)
    assert tuple(got[k] for k in ("finding", "side", "zone", "size", "negated")) == expected
    assert got["finding"] is None or got["finding"] in schema.FINDINGS
    assert got["side"] is None or got["side"] in schema.SIDES
    assert got["zone"] is None or got["zone"] in schema.ZONES
    assert got["size"] is None or got["size"] in schema.SIZES


def test_run_together_zone_words():
    """'midlung' (as in 'the left midlung zone') is the middle zone, and is perturbed as one."""
    assert parse_caption("left midlung opacity")["zone"] == "middle"
    zones = by_kind("There is opacity within the left midlung zone.", "zone")
    assert "There is opacity within the left upper lung zone." in zones
    assert parse_caption("Right upperlung nodule")["zone"] == "upper"


def test_caption_attribute_ids_use_schema_indices():
    ids = captions.caption_attribute_ids("small left apical pneumothorax")
    assert ids == {"finding_id": schema.finding_id("pneumothorax"),
                   "side_id": schema.side_id("left"), "zone_id": schema.zone_id("apical"),
                   "size_id": schema.size_id("small"), "negated": 0}
    assert captions.caption_attribute_ids("right upper zone")["finding_id"] == -1


# --- every negative, every caption ---------------------------------------------------------------
@pytest.mark.parametrize("caption", ALL)
def test_negatives_change_exactly_their_attribute(caption):
    negatives = hard_negatives(caption, 50, rng())
    assert negatives, caption
    texts = [norm(h.text) for h in negatives]
    assert len(set(texts)) == len(texts), texts
    before = parse_caption(caption)
    for h in negatives:
        assert isinstance(h, HardNegative) and h.kind in PERTURBATION_TYPES
        assert norm(h.text) != norm(caption)
        assert h.text == h.text.strip() and "  " not in h.text
        after = parse_caption(h.text)
        changed = {k for k in before if before[k] != after[k]}
        if h.kind == "negation" and changed == {"negated", "size"}:
            assert after["size"] is None, (caption, h)  # "small X" -> "no X"
        else:
            assert changed == {ATTRIBUTE[h.kind]}, (caption, h, before, after)
        assert "left middle lobe" not in h.text.lower(), h
        assert not re.search(r"\b(?:no\s+no|not\s+not)\b", h.text, re.I), h


@pytest.mark.parametrize("caption", ALL)
def test_capitalisation_of_first_letter_is_preserved(caption):
    for h in hard_negatives(caption, 50, rng()):
        assert h.text[0].isupper() == caption[0].isupper(), (caption, h)


# --- the specific edits -----------------------------------------------------------------------
def test_laterality_swaps_side_and_keeps_the_rest():
    assert "Left lower lobe consolidation" in by_kind("Right lower lobe consolidation",
                                                      "laterality")
    assert "There is a right effusion." in by_kind("There is a left effusion.", "laterality")
    assert "right-sided pleural effusion" in by_kind("left-sided pleural effusion", "laterality")
    assert "LLL consolidation" in by_kind("RLL consolidation", "laterality")
    assert "L lower lobe opacity" in by_kind("R lower lobe opacity", "laterality")
    assert "There is mild left basilar atelectasis." in by_kind(
        "There is mild right basilar atelectasis.", "laterality")
    # unilateral noun phrase -> bilateral as a further variant
    assert "moderate bilateral pleural effusions" in by_kind("moderate left pleural effusion",
                                                             "laterality")


def test_laterality_respects_lung_anatomy():
    # the left lung has no middle lobe: its counterpart is the lingula
    assert by_kind("Right middle lobe pneumonia", "laterality") == ["Left lingular pneumonia"]
    assert by_kind("Consolidation in the right middle lobe", "laterality") == [
        "Consolidation in the left lingula"]
    assert by_kind("Lingular opacity", "laterality") == ["Right middle lobe opacity"]


def test_acronyms_and_sentence_case():
    # an acronym-led span does not capitalise its replacement; sentence openers stay capitalised
    assert by_kind("Right-sided PICC line terminates in the SVC", "negation") == [
        "No right-sided PICC line terminates in the SVC"]
    assert by_kind("RML pneumonia", "laterality") == ["Lingular pneumonia"]
    assert by_kind("Consolidation in the RML", "laterality") == ["Consolidation in the lingula"]
    assert by_kind("No RLL consolidation", "negation") == ["RLL consolidation"]
    assert by_kind("RLL consolidation", "negation") == ["No RLL consolidation"]


def test_devices_are_not_swapped_for_lung_findings():
    assert by_kind("Right-sided PICC line terminates in the SVC", "finding") == []
    assert by_kind("ET tube left in place", "laterality") == []  # "left" here is a verb


def test_bilateral_becomes_unilateral():
    assert set(by_kind("Bilateral pleural effusions, left greater than right", "laterality")) == {
        "Right pleural effusion", "Left pleural effusion"}
    assert set(by_kind("bilateral perihilar edema", "laterality")) == {
        "right perihilar edema", "left perihilar edema"}
    assert set(by_kind("Bibasilar atelectasis", "laterality")) == {
        "Right basilar atelectasis", "Left basilar atelectasis"}
    assert set(by_kind("Atelectasis at the lung bases.", "laterality")) == {
        "Atelectasis at the right lung base.", "Atelectasis at the left lung base."}
    assert set(by_kind("Patchy opacities in both lungs", "laterality")) == {
        "Patchy opacities in the right lung", "Patchy opacities in the left lung"}
    assert set(by_kind("There are bilateral pleural effusions.", "laterality")) == {
        "There is right pleural effusion.", "There is left pleural effusion."}
    assert set(by_kind("Small bilateral pleural effusions are present.", "laterality")) == {
        "Small right pleural effusion is present.", "Small left pleural effusion is present."}
    # the comparison opening the phrase becomes the side, it is not just dropped
    assert set(by_kind("Left greater than right pleural effusions", "laterality")) == {
        "Right pleural effusion", "Left pleural effusion"}


def test_zone_moves_to_another_zone_with_grammar_and_anatomy():
    zones = by_kind("Right lower lobe consolidation", "zone")
    assert set(zones) == {"Right upper lobe consolidation", "Right middle lobe consolidation"}
    left = by_kind("Increased opacity in the left lower lobe concerning for pneumonia.", "zone")
    assert set(left) == {"Increased opacity in the left upper lobe concerning for pneumonia.",
                         "Increased opacity in the left lingula concerning for pneumonia."}
    assert set(by_kind("Left upper lobe nodules", "zone")) == {"Left lingular nodules",
                                                               "Left lower lobe nodules"}
    assert set(by_kind("small nodule in the right upper zone", "zone")) == {
        "small nodule in the right mid zone", "small nodule in the right lower zone"}
    assert set(by_kind("bilateral perihilar edema", "zone")) == {"bilateral apical edema",
                                                                 "bilateral basilar edema"}
    assert set(by_kind("Left retrocardiac opacity", "zone")) == {"Left apical opacity",
                                                                 "Left perihilar opacity"}
    assert set(by_kind("Atelectasis at the lung bases.", "zone")) == {
        "Atelectasis at the lung apices.", "Atelectasis at the hila."}
    # lingula without a side word: the implied left side is written out, not lost
    assert set(by_kind("Opacity in the lingula", "zone")) == {"Opacity in the left upper lobe",
                                                              "Opacity in the left lower lobe"}
    for caption in ALL:  # never a middle lobe on the left, never a plural lingula
        for text in by_kind(caption, "zone"):
            assert "left middle lobe" not in text.lower() and "lingulas" not in text.lower()


def test_finding_is_replaced_by_a_really_different_finding():
    neg = by_kind("Right lower lobe consolidation", "finding")
    assert neg and all(t.startswith("Right lower lobe ") for t in neg)
    for text in neg:  # no synonym, no hypernym, no pleural finding "in a lobe"
        assert not re.search(r"opacit|infiltrat|pneumonia|airspace|effusion|pneumothora", text,
                             re.I)
    # plural stays plural
    for text in by_kind("Bilateral pleural effusions, left greater than right", "finding"):
        m = re.match(r"Bilateral (\w+), left greater than right$", text)
        assert m and m.group(1).endswith("s"), text
    # article agreement: "a left effusion" -> "a left nodule", never "a left edema"
    for text in by_kind("There is a left effusion.", "finding"):
        assert re.match(r"There is an? left (nodule|mass|opacity|pneumothorax|calcification)\.$",
                        text)
    # "mildly enlarged cardiac silhouette" -> "Mild <finding>"
    mild = by_kind("Mildly enlarged cardiac silhouette", "finding")
    assert mild and all(t.startswith("Mild ") for t in mild)
    # a lateral finding does not become cardiomegaly
    for text in by_kind("small left apical pneumothorax", "finding"):
        assert "cardiomegaly" not in text
    assert "No pleural effusion is seen." in {
        t for seed in range(10) for t in by_kind("No pneumothorax is seen.", "finding", seed)}


def test_negation_negates_or_affirms():
    assert by_kind("small left apical pneumothorax", "negation") == ["no left apical pneumothorax"]
    assert by_kind("There is a left effusion.", "negation") == ["There is no left effusion."]
    assert by_kind("There is mild right basilar atelectasis.", "negation") == [
        "There is no right basilar atelectasis."]
    assert by_kind("Right lower lobe consolidation", "negation") == [
        "No right lower lobe consolidation"]
    assert by_kind("A small right pleural effusion is present.", "negation") == [
        "No right pleural effusion is present."]
    assert by_kind("The heart is mildly enlarged.", "negation") == ["The heart is not enlarged."]
    assert by_kind("Bilateral pleural effusions, left greater than right", "negation") == [
        "No bilateral pleural effusions"]
    assert by_kind("No pneumothorax is seen.", "negation") == ["Pneumothorax is seen."]
    assert by_kind("No evidence of pneumothorax.", "negation") == ["Pneumothorax."]
    assert by_kind("Right pleural effusion is not seen.", "negation") == [
        "Right pleural effusion is seen."]
    assert by_kind("Right apical pneumothorax is no longer seen.", "negation") == [
        "Right apical pneumothorax is seen."]
    assert by_kind("Lungs are clear without consolidation", "negation") == [
        "Lungs are clear with consolidation"]
    assert by_kind("No large pleural effusion.", "negation") == ["Large pleural effusion."]
    assert by_kind("Multiple bilateral pulmonary nodules", "negation") == [
        "No bilateral pulmonary nodules"]
    assert by_kind("No right pneumothorax. Small left effusion.", "negation") == [
        "Right pneumothorax. Small left effusion."]


def test_size_swaps_size_and_severity():
    assert by_kind("small left apical pneumothorax", "size") == [
        "large left apical pneumothorax", "moderate left apical pneumothorax"]
    assert set(by_kind("moderate left pleural effusion", "size")) == {
        "small left pleural effusion", "large left pleural effusion"}
    assert set(by_kind("Moderate cardiomegaly", "size")) == {"Mild cardiomegaly",
                                                             "Severe cardiomegaly"}
    assert by_kind("There is mild right basilar atelectasis.", "size")[0] == (
        "There is severe right basilar atelectasis.")
    assert by_kind("Severe pulmonary edema", "size")[0] == "Mild pulmonary edema"
    assert by_kind("The heart is mildly enlarged.", "size")[0] == "The heart is severely enlarged."
    assert by_kind("Small to moderate right pleural effusion", "size") == [
        "Large right pleural effusion"]
    assert by_kind("large mass in the left lower zone", "size")[0] == (
        "small mass in the left lower zone")
    assert by_kind("A small right pleural effusion is present.", "size")[0] == (
        "A large right pleural effusion is present.")
    assert by_kind("Minimal left basilar atelectasis", "size")[0] == (
        "Extensive left basilar atelectasis")


# --- applicability, k, determinism ----------------------------------------------------------------
@pytest.mark.parametrize("caption, absent", [
    ("enlarged cardiac silhouette", {"laterality", "zone", "size"}),
    ("No pneumothorax is seen.", {"laterality", "zone", "size"}),
    ("moderate left pleural effusion", {"zone"}),
    ("Right lower lobe consolidation", {"size"}),
    ("Pneumothorax cannot be excluded.", {"negation", "laterality", "zone", "size"}),
    ("No change in the left effusion.", {"negation", "size"}),
    ("The heart is mildly enlarged.", {"finding", "laterality", "zone"}),
    ("right upper zone", {"finding", "negation", "size"}),
    ("", set(PERTURBATION_TYPES)),
])
def test_inapplicable_kinds_are_skipped(caption, absent):
    kinds = {h.kind for h in hard_negatives(caption, 50, rng())}
    assert not kinds & absent, (caption, kinds)
    assert {h.kind for h in perturbations(caption, rng())} == kinds


def test_perturbations_one_per_kind_in_order():
    caption = "small left apical pneumothorax"
    got = perturbations(caption, rng())
    assert [h.kind for h in got] == list(PERTURBATION_TYPES)
    two = perturbations(caption, rng(), per_kind=2)
    assert len(two) > len(got)
    assert all(sum(h.kind == k for h in two) <= 2 for k in PERTURBATION_TYPES)
    only = perturbations(caption, rng(), kinds=("size", "negation"))
    assert [h.kind for h in only] == ["size", "negation"]
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbations(caption, rng(), kinds=("colour",))


@pytest.mark.parametrize("caption", ALL)
def test_hard_negatives_k_distinct_and_spread_over_kinds(caption):
    everything = hard_negatives(caption, 1000, rng())
    applicable = {h.kind for h in everything}
    for k in range(0, len(everything) + 2):
        got = hard_negatives(caption, k, rng(k))
        assert len(got) == min(k, len(everything))
        assert len({norm(h.text) for h in got}) == len(got)
        # round-robin: the first len(applicable) negatives cover distinct kinds
        first = [h.kind for h in got[:len(applicable)]]
        assert len(set(first)) == len(first)
        if k >= len(applicable):
            assert {h.kind for h in got} == applicable


def test_hard_negatives_respect_kinds_argument():
    got = hard_negatives("small left apical pneumothorax", 10, rng(), kinds=("size", "zone"))
    assert got and {h.kind for h in got} == {"size", "zone"}


def test_determinism_for_a_fixed_seed():
    for caption in ALL:
        assert hard_negatives(caption, 6, rng(3)) == hard_negatives(caption, 6, rng(3))
        assert perturbations(caption, rng(3)) == perturbations(caption, rng(3))
    draws = {tuple(h.text for h in hard_negatives("Right lower lobe consolidation", 4, rng(s)))
             for s in range(20)}
    assert len(draws) > 1  # the seed does choose


def test_outputs_match_the_pinned_fingerprints():
    """Parse, attribute ids, mirror, perturbations and hard negatives of 300+ texts (synthetic
    captions and report sentences, real-report wording) are those of the committed table."""
    with open(fingerprints.CAPTIONS_FILE) as f:
        pinned = json.load(f)["texts"]
    current = fingerprints.caption_fingerprints([text for text, _ in pinned])["texts"]
    changed = [text for (text, new), (_, old) in zip(current, pinned) if new != old]
    assert not changed, f"{len(changed)} of {len(pinned)} texts differ: {changed[:10]}"


def test_all_caps_report_text():
    neg = {h.kind: h.text for h in perturbations("LEFT LOWER LOBE CONSOLIDATION", rng())}
    assert neg["laterality"] == "RIGHT LOWER LOBE CONSOLIDATION"
    assert neg["negation"] == "NO LEFT LOWER LOBE CONSOLIDATION"
    assert neg["finding"].isupper() and neg["zone"].isupper()


def test_throughput(capsys):
    rounds = 20
    start = time.perf_counter()
    for i in range(rounds):
        captions.lexicon.analyse.cache_clear()
        for caption in ALL:
            hard_negatives(caption, 8, np.random.default_rng(i))
    cold = rounds * len(ALL) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(rounds):
        for caption in ALL:
            hard_negatives(caption, 8, np.random.default_rng(i))
    warm = rounds * len(ALL) / (time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nhard_negatives(k=8): {cold:.0f} captions/s uncached, "
              f"{warm:.0f} captions/s cached")
