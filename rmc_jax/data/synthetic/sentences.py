"""Sentences about one finding, as radiologists write them, from the phrase tables.

``positive_sentence(rng, finding)`` states a present finding in the FINDINGS section (zone phrase,
size or severity words, hedges and tails: "Small left apical pneumothorax.", "Patchy right lower
lobe opacity, likely pneumonia."); ``impression_item`` the shorter IMPRESSION form. The tables
(``phrases.json``) and every template name the patient's side explicitly; ``choose`` is the one
way a phrase is drawn from a table, so the same generator state gives the same text.
"""

from __future__ import annotations

from rmc_jax.data import schema
from rmc_jax.data.synthetic.findings import Finding
from rmc_jax.data.synthetic.tables import load_table

PHRASES = load_table("phrases")
# Zone phrases with {s} for the side word: nouns with a determiner ("the {s} upper lobe") and
# adjectival forms placed before the finding noun ("{s} upper lobe"), one-sided and bilateral.
ZONE_NOUNS = PHRASES["zone_nouns"]
ZONE_ADJECTIVES = PHRASES["zone_adjectives"]
BILATERAL_ZONE_NOUNS = PHRASES["bilateral_zone_nouns"]
BILATERAL_ZONE_ADJECTIVES = PHRASES["bilateral_zone_adjectives"]
LOBES = PHRASES["lobes"]                    # side -> zone -> the lobe a collapse there is of
# Size-class descriptions of consolidation areas, and the words, hedges and tails that vary the
# sentences of each finding.
AREA_PHRASES = PHRASES["area_phrases"]
HEDGES = PHRASES["hedges"]
OPACITY_WORDS = PHRASES["opacity_words"]
OPACITY_VERBS = PHRASES["opacity_verbs"]
ATELECTASIS_OPACITIES = PHRASES["atelectasis_opacities"]
ATELECTASIS_HEDGES = PHRASES["atelectasis_hedges"]
NODULE_TAILS = PHRASES["nodule_tails"]
MASS_TAILS = PHRASES["mass_tails"]
BILATERAL_EFFUSION_TAILS = PHRASES["bilateral_effusion_tails"]
PNEUMONIA_TAILS = PHRASES["pneumonia_tails"]
CT_TAILS = PHRASES["ct_tails"]


def choose(rng, options):
    """One of ``options``, uniformly (one integer drawn from ``rng``)."""
    return options[int(rng.integers(len(options)))]


def capitalise(text: str) -> str:
    """``text`` with its first letter upper case."""
    return text[:1].upper() + text[1:] if text else text


def indefinite_article(phrase: str) -> str:
    """'a' or 'an' before ``phrase``."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _zone_phrase(rng, zone, side, one_sided, bilateral, right_middle, left_middle):
    """A phrase of table ``one_sided`` (``bilateral`` for both sides) with the side filled in;
    the middle zone also has the right middle lobe and the lingula forms."""
    if side == "bilateral":
        return choose(rng, bilateral[zone])
    opts = one_sided[zone]
    if zone == "middle" and side == "right":
        opts = opts + right_middle
    if zone == "middle" and side == "left":
        opts = opts + left_middle
    return choose(rng, opts).format(s=side)


def zone_noun_phrase(rng, zone, side):
    """A noun phrase naming ``zone`` of the lung on ``side`` ("the left lung base", "both
    apices"); the right middle zone may be the right middle lobe, the left one the lingula."""
    return _zone_phrase(rng, zone, side, ZONE_NOUNS, BILATERAL_ZONE_NOUNS,
                        ("the right middle lobe", "the right middle lobe"), ("the lingula",))


def zone_adjective(rng, zone, side):
    """An adjectival zone phrase placed before a finding noun ("left basilar", "bibasilar")."""
    return _zone_phrase(rng, zone, side, ZONE_ADJECTIVES, BILATERAL_ZONE_ADJECTIVES,
                        ("right middle lobe", "right middle lobe"), ("lingular",))


def _lesion_diameter_cm(finding: Finding) -> float:
    """A nodule's or mass's diameter in cm as a report would state it (0.1 cm steps)."""
    les = finding.lesions[0]
    d = 2.0 * (les.param("r") or 0.02)
    return round(d * (28.0 if finding.name == "nodule" else 35.0), 1)


def describe(rng, f: Finding, plural: bool = False):
    """(pre, noun, adjectival): size / quality words and the head noun phrase of a finding.

    ``adjectival`` is False for phrases such as 'small focus of consolidation' that cannot take
    a zone adjective between ``pre`` and ``noun``.
    """
    sz = f.size
    s = "s" if plural else ""
    ies = "ies" if plural else "y"
    if f.name == "nodule":
        cm = _lesion_diameter_cm(f)
        pre = choose(rng, {"small": ("small", "tiny", "subcentimeter" if cm < 1.1 else "small"),
                           "moderate": ("", f"{cm} cm", "moderate-sized"),
                           "large": ("large", f"{cm} cm")}[sz])
        noun = choose(rng, (f"nodule{s}", f"pulmonary nodule{s}", f"nodular opacit{ies}",
                            f"rounded nodule{s}"))
        if f.lesions[0].param("calcified"):
            noun = f"calcified nodule{s}"
        return pre, noun, True
    if f.name == "mass":
        cm = _lesion_diameter_cm(f)
        es = "es" if plural else ""
        pre = choose(rng, {"small": ("", f"{cm} cm"),
                           "moderate": (f"{cm} cm", "", "moderate-sized"),
                           "large": ("large", f"{cm} cm", "large lobulated")}[sz])
        noun = choose(rng, (f"mass{es}", f"masslike opacit{ies}", f"lobulated mass{es}",
                            f"soft tissue mass{es}"))
        if pre.endswith("lobulated") and noun.startswith("lobulated"):
            noun = noun[len("lobulated "):]
        return pre, noun, True
    if f.name == "consolidation":
        if rng.random() < 0.25:
            phrase = choose(rng, AREA_PHRASES[sz])
            if plural:
                for one, many in (("focus", "foci"), ("area", "areas"), ("region", "regions")):
                    phrase = phrase.replace(one, many)
            return "", phrase, False
        pre = choose(rng, {"small": ("patchy", "subtle", "minimal", "faint", "mild", "small"),
                           "moderate": ("", "patchy", "moderate", "focal"),
                           "large": ("dense", "extensive", "confluent", "large")}[sz])
        noun = choose(rng, ("consolidation", f"airspace opacit{ies}", "airspace consolidation",
                            "airspace disease", f"opacit{ies}"))
        return pre, noun, True
    if f.name == "atelectasis":
        pre, noun = choose(rng, {"small": (("plate-like", "atelectasis"),
                                           ("linear", "atelectasis"),
                                           ("subsegmental", "atelectasis"),
                                           ("minimal", "atelectasis"),
                                           ("discoid", "atelectasis"), ("mild", "atelectasis")),
                                 "moderate": (("", "atelectasis"), ("segmental", "atelectasis"),
                                              ("moderate", "atelectasis"),
                                              ("", "atelectasis with mild volume loss")),
                                 "large": (("lobar", "collapse"), ("lobar", "atelectasis"),
                                           ("extensive", "atelectasis"),
                                           ("", "atelectasis with marked volume loss"))}[sz])
        return pre, noun, True
    raise ValueError(f.name)


def _join_words(*words):
    """The non-empty words joined by spaces."""
    return " ".join(w for w in words if w)


def _plural_noun(noun):
    """Whether a head noun phrase is plural (takes 'are')."""
    return noun.endswith(("ies", "nodules", "masses", "foci", "areas", "regions"))


def _uncountable_noun(noun):
    """Whether a head noun phrase takes no article ("consolidation", "atelectasis")."""
    return noun.endswith(("consolidation", "disease", "atelectasis", "collapse", "volume loss"))


def _lesion_sentence(rng, f: Finding, zone_side: str) -> str:
    """Positive sentence for nodule / mass / consolidation / atelectasis."""
    plural = zone_side == "bilateral" and f.name in ("nodule", "mass", "consolidation")
    pre, noun, adj_ok = describe(rng, f, plural)
    d = _join_words(pre, noun)
    many = _plural_noun(noun)
    be = "are" if many else "is"
    a = "" if many or _uncountable_noun(noun) else indefinite_article(d) + " "
    loc = zone_noun_phrase(rng, f.zone, zone_side)
    adj = zone_adjective(rng, f.zone, zone_side)
    prep = choose(rng, ("in", "within", "at", "involving")) if f.zone != "basal" else \
        choose(rng, ("at", "in", "at"))
    verb = choose(rng, ("seen", "noted", "present", "demonstrated", "identified", "visualized"))
    demo = "demonstrate" if zone_side == "bilateral" else "demonstrates"
    lobe = LOBES.get(zone_side, {}).get(f.zone)
    templates = [
        f"There {be} {a}{d} {prep} {loc}.",
        f"{capitalise(a + d)} {be} {verb} {prep} {loc}.",
        f"{capitalise(loc)} {demo} {a}{d}.",
        f"{capitalise(prep)} {loc}, there {be} {a}{d}.",
    ]
    if adj_ok:
        ad = _join_words(pre, adj, noun)
        article = "" if many or _uncountable_noun(noun) else indefinite_article(ad) + " "
        templates += [f"{capitalise(ad)}.", f"{capitalise(ad)} {be} {verb}.",
                      f"There {be} {article}{ad}."]
    if f.name == "consolidation":
        dx = choose(rng, ("pneumonia", "infection", "aspiration", "an infectious process"))
        bron = f.lesions[0].param("bronchograms")
        extra = " with air bronchograms" if bron and rng.random() < 0.7 else ""
        hedge = choose(rng, HEDGES)
        templates += [
            f"There {be} {a}{d} {prep} {loc}{extra}, {hedge} {dx}.",
            f"{capitalise(choose(rng, OPACITY_WORDS))} {prep} {loc}{extra} "
            f"{choose(rng, OPACITY_VERBS)} "
            f"{choose(rng, ('pneumonia', 'consolidation', 'airspace disease'))}.",
        ]
        if adj_ok:
            templates += [f"{capitalise(_join_words(pre, adj, noun))}{extra}, {hedge} {dx}."]
    if f.name == "atelectasis":
        templates += [
            f"{capitalise(choose(rng, ATELECTASIS_OPACITIES))} {prep} {loc}, "
            f"{choose(rng, ATELECTASIS_HEDGES)} "
            f"{choose(rng, ('atelectasis', 'subsegmental atelectasis', 'atelectasis'))}.",
        ]
        if f.size == "large" and lobe and zone_side != "bilateral":
            templates += [f"There is collapse of the {lobe}.",
                          f"Opacification {prep} {loc} with volume loss, consistent with {lobe} "
                          f"collapse."]
    if f.name in ("nodule", "mass"):
        templates += [
            f"{capitalise(a + d)} {prep} {loc} {choose(rng, NODULE_TAILS)}.",
        ]
        if f.name == "mass":
            templates += [f"{capitalise(a + d)} {prep} {loc}, {choose(rng, MASS_TAILS)}."]
        if f.lesions[0].param("calcified"):
            templates += [f"{capitalise(a + d)} {prep} {loc}, likely a granuloma."]
    return choose(rng, templates)


def size_word(rng, size, kind="lesion"):
    """A word for size class ``size`` of a finding of ``kind``: 'lesion', 'effusion', 'ptx'
    (sizes), 'cardiac' or 'severity' (mild / moderate / severe)."""
    if kind == "cardiac":
        return choose(rng, {"small": ("mild",), "moderate": ("moderate",),
                            "large": ("severe", "marked")}[size])
    if kind == "severity":
        return choose(rng, {"small": ("mild", "mild", "mild"), "moderate": ("moderate",),
                            "large": ("severe", "marked", "extensive")}[size])
    return choose(rng, {"small": ("small", "small", "tiny",
                                  "trace" if kind in ("effusion", "ptx") else "small"),
                        "moderate": ("moderate", "moderate-sized", "moderate"),
                        "large": ("large", "large",
                                  "massive" if kind == "effusion" else "large")}[size])


def _effusion_sentence(rng, f: Finding) -> str:
    """Pleural effusion(s): one side, or both with the same or different sizes."""
    sides = {les.side: les.size for les in f.lesions}
    if len(sides) == 2:
        sr, sl = sides["right"], sides["left"]
        if sr == sl:
            w = size_word(rng, sr, "effusion")
            return choose(rng, (f"{capitalise(w)} bilateral pleural effusions.",
                                f"There are {w} bilateral pleural effusions.",
                                f"{capitalise(w)} bilateral pleural effusions are present.",
                                f"{capitalise(w)} pleural effusions are seen bilaterally.",
                                f"{capitalise(w)} bilateral effusions, "
                                f"{choose(rng, BILATERAL_EFFUSION_TAILS)}."))
        wr, wl = size_word(rng, sr, "effusion"), size_word(rng, sl, "effusion")
        return choose(rng, (f"{capitalise(wr)} right and {wl} left pleural effusions.",
                            f"Bilateral pleural effusions, {wr} on the right and {wl} on the left.",
                            f"There are bilateral pleural effusions, {wr} on the right and {wl} "
                            f"on the left."))
    side, size = next(iter(sides.items()))
    w = size_word(rng, size, "effusion")
    opts = [f"{capitalise(w)} {side} pleural effusion.",
            f"There is {indefinite_article(w)} {w} {side} pleural effusion.",
            f"There is {indefinite_article(w)} {w} {side}-sided pleural effusion.",
            f"{capitalise(indefinite_article(w))} {w} {side} pleural effusion is present.",
            f"{capitalise(w)} {side} effusion is seen.",
            f"{capitalise(indefinite_article(w))} {w} amount of fluid is seen in the {side} "
            f"pleural space.",
            f"{capitalise(w)} amount of {side} pleural fluid."]
    if size == "small":
        opts += [f"Blunting of the {side} costophrenic angle is consistent with a small "
                 f"pleural effusion.",
                 f"Mild blunting of the {side} costophrenic angle suggests a small effusion."]
    if size == "large":
        opts += [f"Large {side} pleural effusion obscures the {side} hemidiaphragm.",
                 f"Large {side} pleural effusion with a meniscus extending to the {side} mid lung."]
    if size == "moderate":
        opts += [f"Moderate {side} pleural effusion layers at the {side} base with a meniscus."]
    return choose(rng, opts)


def _pneumothorax_sentence(rng, f: Finding) -> str:
    """Pneumothorax, often with where its pleural line is seen."""
    les = f.lesions[0]
    side, w = les.side, size_word(rng, les.size, "ptx")
    zone = "apical" if f.zone == "apical" else choose(rng, ("apicolateral", "upper lateral"))
    loc = zone_noun_phrase(rng, f.zone, side)
    opts = [f"There is {indefinite_article(w)} {w} {side} {zone} pneumothorax.",
            f"{capitalise(w)} {side} pneumothorax.",
            f"{capitalise(w)} {side} {zone} pneumothorax.",
            f"{capitalise(indefinite_article(w))} {w} {side} pneumothorax is present, with the "
            f"visceral pleural line seen in {loc}.",
            f"{capitalise(side)} {zone} pneumothorax, {w} in size.",
            f"A visceral pleural line in {loc} indicates {indefinite_article(w)} {w} pneumothorax."]
    if les.size == "small":
        opts += [f"A thin pleural line is visible at the {side} apex, consistent with a small "
                 f"pneumothorax."]
    if les.size == "large":
        opts += [f"Large {side} pneumothorax with partial collapse of the {side} lung."]
    return choose(rng, opts)


def _cardiomegaly_sentence(rng, f: Finding) -> str:
    """Cardiomegaly by its severity, sometimes with the cardiothoracic ratio."""
    adv = {"small": "mildly", "moderate": "moderately",
           "large": choose(rng, ("markedly", "severely"))}[f.size]
    sev = size_word(rng, f.size, "cardiac")
    opts = [f"{capitalise(sev)} cardiomegaly.", f"The heart is {adv} enlarged.",
            f"Heart size is {adv} enlarged.",
            f"{capitalise(sev)} enlargement of the cardiac silhouette.",
            f"The cardiac silhouette is {adv} enlarged.", f"There is {sev} cardiomegaly."]
    if rng.random() < 0.25:
        ctr = f.lesions[0].param("ctr")
        opts = [o[:-1] + f", with a cardiothoracic ratio of approximately {ctr:.2f}." for o in opts]
    return choose(rng, opts)


def _edema_sentence(rng, f: Finding) -> str:
    """Pulmonary edema by severity and distribution, sometimes with Kerley lines."""
    sev = size_word(rng, f.size, "severity")
    dist = {"perihilar": ("in a perihilar distribution", "with bilateral perihilar haziness",
                          "in a bat-wing distribution", "centered at the hila"),
            "basal": ("predominantly at the lung bases", "most pronounced at both bases"),
            "diffuse": ("diffusely in both lungs", "throughout both lungs")}[f.zone or "perihilar"]
    kind = choose(rng, ("pulmonary edema", "interstitial edema", "pulmonary edema",
                        "interstitial pulmonary edema") if f.size != "large" else
                  ("pulmonary edema", "alveolar pulmonary edema", "pulmonary edema"))
    d = choose(rng, dist)
    opts = [f"{capitalise(sev)} {kind} {d}.", f"There is {sev} {kind} {d}.",
            f"{capitalise(sev)} bilateral {kind}.",
            f"Bilateral perihilar haziness and indistinct vascular markings, consistent with "
            f"{sev} {kind}.",
            f"Findings are consistent with {sev} {kind} {d}.",
            f"{capitalise(sev)} pulmonary vascular congestion with {kind} {d}."]
    if f.zone != "perihilar":
        opts = [o for o in opts if "perihilar" not in o] or opts
    out = choose(rng, opts)
    if f.lesions[0].param("kerley") and rng.random() < 0.6:
        out += " " + choose(rng, ("Kerley B lines are present at the lung bases.",
                                  "Septal lines are seen at both bases, compatible with "
                                  "interstitial edema."))
    return out


def positive_sentence(rng, f: Finding) -> str:
    """The FINDINGS sentence stating finding ``f`` (side, zone and size words included)."""
    if f.name == "pleural_effusion":
        return _effusion_sentence(rng, f)
    if f.name == "pneumothorax":
        return _pneumothorax_sentence(rng, f)
    if f.name == "cardiomegaly":
        return _cardiomegaly_sentence(rng, f)
    if f.name == "edema":
        return _edema_sentence(rng, f)
    if f.side == "bilateral" and len(f.lesions) == 2 and f.lesions[0].size != f.lesions[1].size \
            and rng.random() < 0.5:
        # 'Bilateral basilar atelectasis, greater on the right.'
        big = max(f.lesions, key=lambda l: schema.SIZES.index(l.size)).side
        base = _lesion_sentence(rng, f, "bilateral")
        return base[:-1] + f", {choose(rng, ('greater', 'more pronounced', 'worse'))} on the {big}."
    return _lesion_sentence(rng, f, f.side)


def impression_item(rng, f: Finding) -> str:
    """The IMPRESSION item for finding ``f``: shorter, sometimes with a diagnosis or advice."""
    if f.name in ("nodule", "mass", "consolidation", "atelectasis"):
        pre, noun, adj_ok = describe(rng, f, f.side == "bilateral" and f.name != "atelectasis")
        if adj_ok:
            item = capitalise(_join_words(pre, zone_adjective(rng, f.zone, f.side), noun))
        else:
            item = capitalise(
                f"{_join_words(pre, noun)} in {zone_noun_phrase(rng, f.zone, f.side)}")
        if f.name == "consolidation" and rng.random() < 0.5:
            item += f", {choose(rng, PNEUMONIA_TAILS)}"
        if f.name in ("nodule", "mass") and rng.random() < 0.5:
            item += f"; {choose(rng, CT_TAILS)}"
        return item + "."
    if f.name == "pleural_effusion":
        return _effusion_sentence(rng, f)
    if f.name == "pneumothorax":
        les = f.lesions[0]
        return f"{capitalise(size_word(rng, les.size, 'ptx'))} {les.side} pneumothorax."
    if f.name == "cardiomegaly":
        return choose(rng, (f"{capitalise(size_word(rng, f.size, 'cardiac'))} cardiomegaly.",
                            "Cardiomegaly.", "Enlarged cardiac silhouette."))
    if f.name == "edema":
        return choose(rng, (f"{capitalise(size_word(rng, f.size, 'severity'))} pulmonary edema.",
                            "Pulmonary edema.",
                            f"Findings of {size_word(rng, f.size, 'severity')} pulmonary edema."))
    raise ValueError(f.name)


