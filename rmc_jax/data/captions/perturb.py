"""The five perturbations of a caption, each changing one attribute of the described finding.

* ``laterality``: right <-> left (also ``-sided``, clearly lateral ``R``/``L``, ``RLL``-style
  abbreviations); bilateral -> right / left; a plain unilateral noun phrase -> bilateral.
* ``zone``: move the finding to another lung zone (upper/apical, middle/perihilar/lingula,
  lower/basal/retrocardiac), keeping the grammatical form (lobe, zone, adjective, noun) and the
  anatomy (the left lung has no middle lobe: the lingula takes its place).
* ``finding``: replace the finding phrase with a clearly different finding (never a synonym or a
  hypernym such as "opacity" for "consolidation"), keeping number and article agreement.
* ``negation``: negate an affirmative caption (dropping its size, since "no small X" is a
  different claim) or affirm a negated one.
* ``size``: small/tiny/minimal/mild <-> large/extensive/massive/severe, moderate -> small or
  large (mild or severe for severity findings).

``GENERATORS[kind](analysis, rng)`` returns candidate texts in preference order; they are not
checked here (``negatives`` keeps those whose parse changed as intended).
"""

from __future__ import annotations

import re

import numpy as np

from rmc_jax.data.captions.editing import (OTHER_SIDE, apply_edits, case_like, modifier_position,
                                           plural_last, singular_last, zone_for_side)
from rmc_jax.data.captions.lexicon import (BILATERAL_SIDE_KINDS, MODERATE_WORDS, ZONE_LEVEL_RE,
                                           Analysis, Token, primary_negation_cues)

PERTURBATION_TYPES = ("laterality", "zone", "finding", "negation", "size")

_I = re.IGNORECASE

# ----------------------------------------------------------------------------------------------
# What replaces what
# ----------------------------------------------------------------------------------------------
# Similar findings never replace each other (a synonym or near-synonym is not a negative).
_FINDING_GROUP = {
    "lung_opacity": "airspace", "consolidation": "airspace", "infiltration": "airspace",
    "pneumonia": "airspace", "nodule": "focal", "mass": "focal", "lung_lesion": "focal",
    "calcification": "focal", "other_lesion": "focal", "atelectasis": "atelectasis",
    "pleural_effusion": "effusion", "pneumothorax": "pneumothorax", "cardiomegaly": "cardiac",
    "enlarged_cardiomediastinum": "cardiac", "edema": "edema", "fibrosis": "fibrotic",
    "interstitial_lung_disease": "fibrotic", "pleural_thickening": "pleural",
    "pleural_other": "pleural", "aortic_enlargement": "aortic", "fracture": "fracture",
    "support_device": "device",
}
_PARENCHYMAL = frozenset({"airspace", "focal", "atelectasis", "edema", "fibrotic"})
# Target surfaces: canonical -> (singular, plural or None, takes "a/an").
_FINDING_TARGETS = {
    "nodule": ("nodule", "nodules", True),
    "mass": ("mass", "masses", True),
    "consolidation": ("consolidation", None, False),
    "atelectasis": ("atelectasis", None, False),
    "pleural_effusion": ("pleural effusion", "pleural effusions", True),
    "pneumothorax": ("pneumothorax", "pneumothoraces", True),
    "edema": ("edema", None, False),
    "lung_opacity": ("opacity", "opacities", True),
    "pneumonia": ("pneumonia", None, False),
    "cardiomegaly": ("cardiomegaly", None, False),
    "fibrosis": ("fibrosis", None, False),
    "pleural_thickening": ("pleural thickening", None, False),
    "calcification": ("calcification", "calcifications", True),
}
_NOT_LOCALISED = frozenset({"cardiomegaly", "enlarged_cardiomediastinum", "aortic_enlargement"})
_PLEURAL = frozenset({"pleural_effusion", "pneumothorax", "pleural_thickening"})
_PAIRED = frozenset({"pleural_effusion", "pneumothorax"})  # one per side: singular when unilateral
_SIZE_ADJECTIVES = frozenset({"small", "tiny", "trace", "large", "big", "huge", "massive",
                              "sizable", "sizeable", "medium"})
_SIZED_FINDINGS = frozenset({"nodule", "mass", "lung_lesion", "pleural_effusion", "pneumothorax",
                             "calcification", "other_lesion", None})
# Zones are moved between these groups (a move inside one would say nearly the same).
_ZONE_GROUP = {"upper": "top", "apical": "top", "middle": "mid", "perihilar": "mid",
               "lower": "bottom", "basal": "bottom", "retrocardiac": "bottom", "diffuse": "diffuse"}
_SIZE_SWAP = {  # word -> (opposite extreme, moderate equivalent)
    "small": ("large", "moderate"), "tiny": ("large", "moderate"), "trace": ("large", "moderate"),
    "minimal": ("extensive", "moderate"), "mild": ("severe", "moderate"),
    "slight": ("marked", "moderate"), "mildly": ("severely", "moderately"),
    "slightly": ("markedly", "moderately"), "minimally": ("markedly", "moderately"),
    "large": ("small", "moderate"), "big": ("small", "moderate"), "huge": ("small", "moderate"),
    "massive": ("small", "moderate"), "extensive": ("minimal", "moderate"),
    "sizable": ("small", "moderate"), "sizeable": ("small", "moderate"),
    "severe": ("mild", "moderate"), "marked": ("mild", "moderate"),
    "severely": ("mildly", "moderately"), "markedly": ("mildly", "moderately"),
    "extensively": ("minimally", "moderately"),
}
_ADVERB_TO_ADJ = {"mildly": "mild", "slightly": "slight", "minimally": "minimal",
                  "moderately": "moderate", "severely": "severe", "markedly": "marked",
                  "extensively": "extensive"}

# Negation cue -> what affirms the finding instead ('' deletes the cue).
_NEG_AFFIRM = {"noev": "", "nolonger": "", "no": "", "without": "with",
               "negfor": "positive for", "absence": "presence of", "absent": "present"}

# Sentence structure the negation and finding edits need.
_SENTENCE_RE = re.compile(r"[.;!?\n]")
_THERE_IS_RE = re.compile(r"there\s+(?:is|are|was|were|has\s+been|have\s+been)\s+", _I)
_COPULA_RE = re.compile(r"\b(?:is|are|was|were)\b", _I)
_VERB_RE = re.compile(r"\b(?:is|are|was|were|has|have|had|seen|noted|appears?|remains?)\b", _I)
_DROP_RE = re.compile(r"(?:an?|some|possible|probable|questionable|suspected|likely|multiple|"
                      r"several|numerous|few|scattered)\s+", _I)
_INDEF_BEFORE_RE = re.compile(r"\b(an?)\s+(?:[\w-]+\s+){0,4}$", _I)
_IN_LUNG_RE = re.compile(r"\b(?:in|within|throughout)\s+(?:the\s+|both\s+)?"
                         r"(?:(?:right|left|upper|lower|mid|middle)[\s-]+)*lungs?\b", _I)
_UNCERTAIN_RE = re.compile(r"\b(?:cannot|can\s+not|not)\s+be\s+(?:excluded|ruled\s+out)\b", _I)
_NP_BREAK_RE = re.compile(r"\b(?:is|are|was|were|has|have|had|shows?|demonstrates?|seen|noted|"
                          r"appears?|remains?)\b|[,;:]", _I)


# ----------------------------------------------------------------------------------------------
# One generator per kind: candidate texts in preference order
# ----------------------------------------------------------------------------------------------
def swap_laterality(a: Analysis, rng: np.random.Generator) -> list[str]:
    """Right <-> left everywhere (zones follow the anatomy), then the bilateral form; a
    bilateral caption becomes right and left (in an order drawn from ``rng``)."""
    if a.side is None:
        return []
    text, out = a.text, []
    if a.side in ("right", "left"):
        new = OTHER_SIDE[a.side]
        edits = []
        for t in a.sides:
            if t.kind == "side":
                word = re.match(r"[a-z]+", t.text, _I).group(0)
                edits.append((t.start, t.start + len(word),
                              case_like(word, OTHER_SIDE[t.canon])))
            elif t.kind == "rl":
                edits.append((t.start, t.end, "L" if t.text == "R" else "R"))
            elif t.kind == "abbr":
                flipped = ("L" if t.text[0] == "R" else "R") + t.text[1:]
                if flipped == "LML":  # RML -> the lingula (sentence case is apply_edits's job)
                    flipped = "lingular" if modifier_position(a, t.end) else "lingula"
                edits.append((t.start, t.end, flipped))
        for z in a.zones:
            repl = zone_for_side(a, z, new, False)
            if repl is not None:
                edits.append((z.start, z.end, repl))
        if edits:
            out.append(apply_edits(text, edits))
        out.extend(_to_bilateral(a))
        return out
    # bilateral -> right / left
    markers = [t for t in a.sides if t.kind in BILATERAL_SIDE_KINDS]
    paired = [f for f in a.findings if f.canon in _PAIRED and f.plural and f.replaceable]
    for new in (("right", "left") if rng.random() < 0.5 else ("left", "right")):
        edits = []
        for t in markers:
            low = t.text.lower()
            if t.kind == "comp":  # trailing clause goes; "Left greater than right X" -> "Right X"
                trailing = text[:t.start].rstrip().endswith(",") or any(
                    f.end <= t.start for f in a.findings)
                edits.append((t.start, t.end, "" if trailing else case_like(t.text, new)))
            elif t.kind == "rland":
                edits.append((t.start, t.end,
                              case_like(t.text, new + ("-sided" if "sided" in low else ""))))
            elif t.kind == "bi":
                edits.append((t.start, t.end, case_like(
                    t.text, f"on the {new}" if low.endswith("ly") else new)))
            elif t.kind == "both":
                noun = t.text[4:].strip()
                repl = f"the {new}" + (" " + singular_last(noun) if noun else "")
                edits.append((t.start, t.end, case_like(t.text, repl)))
            elif t.kind == "bizone":
                edits.append((t.start, t.end,
                              case_like(t.text, f"{new} {re.sub(r'^bi-?', '', low)}")))
        bizone_spans = {(t.start, t.end) for t in markers if t.kind == "bizone"}
        inserted = False
        for z in a.zones:
            if (z.start, z.end) in bizone_spans:
                continue
            repl = zone_for_side(a, z, new, True)
            if z.plural and not markers and not inserted:
                repl = f"{new} " + (repl if repl is not None else z.text)
                inserted = True
            if repl is not None:
                edits.append((z.start, z.end, repl))
        for f in paired:
            edits.append((f.start, f.end, singular_last(f.text)))
            clause_end = min([b for b in a.bounds if b >= f.end], default=len(text))
            m = re.compile(r"\s+(are|were|have)\b", _I).match(text, f.end, clause_end)
            if m:
                edits.append((m.start(1), m.end(1), {"are": "is", "were": "was", "have": "has"}[
                    m.group(1).lower()]))
            clause_start = max([b for b in a.bounds if b < f.start], default=-1) + 1
            m = re.compile(r"\bthere\s+(are|were)\b", _I).search(text, clause_start, f.start)
            if m:
                edits.append((m.start(1), m.end(1), "is" if m.group(1).lower() == "are" else "was"))
        if edits:
            out.append(apply_edits(text, edits))
    return out


def _to_bilateral(a: Analysis) -> list[str]:
    """Unilateral noun phrase -> bilateral ("left pleural effusion" -> "bilateral pleural
    effusions"); only where the grammar stays right without rewriting the sentence."""
    words = [t for t in a.sides if t.kind == "side"]
    if len(a.sides) != 1 or len(words) != 1 or _VERB_RE.search(a.text):
        return []
    t = words[0]
    before = a.text[:t.start].rstrip().lower()
    if re.search(r"\b(?:the|a|an|on|to)$", before) or any(
            z.canon in ("middle", "retrocardiac") for z in a.zones):
        return []
    word = re.match(r"[a-z]+", t.text, _I).group(0)
    edits = [(t.start, t.end, case_like(word, "bilateral"))]
    f = a.primary
    if f is not None and f.replaceable and f.start > t.start and not f.plural and f.canon in (
            "nodule", "mass", "pleural_effusion", "pneumothorax", "lung_opacity", "infiltration",
            "lung_lesion", "calcification"):
        edits.append((f.start, f.end, plural_last(f.text)))
    return [apply_edits(a.text, edits)]


_GROUP_LEVEL = {"top": "upper", "mid": "mid", "bottom": "lower"}
_GROUP_ADJ = {"top": "apical", "mid": "perihilar", "bottom": "basilar"}
_GROUP_NOUN = {"top": ("apex", "apices"), "mid": ("hilum", "hila"), "bottom": ("base", "bases")}


def _zone_to_group(a: Analysis, z: Token, group: str) -> tuple | None | bool:
    """Edit moving zone phrase ``z`` into ``group``; True when already there; None when the
    anatomy or grammar has no such form (no left middle lobe, no plural lingula, ...)."""
    if _ZONE_GROUP[z.canon] == group:
        return True
    text, low, side = z.text, z.text.lower(), a.side
    implied = "" if a.sides else (f"{side} " if side in ("right", "left") else "")
    if z.kind == "abbr":
        if group == "mid" and text[0] == "L":
            repl = "lingular" if modifier_position(a, z.end) else "lingula"
            return (z.start, z.end, repl)
        return (z.start, z.end, text[0] + {"top": "U", "mid": "M", "bottom": "L"}[group] + "L")
    if z.kind == "bizone":
        prefix = re.match(r"bi-?", low).group(0)
        repl = {"top": prefix + "apical", "mid": "bilateral perihilar",
                "bottom": prefix + ("basal" if "basal" in low else "basilar")}[group]
        return (z.start, z.end, case_like(text, repl))
    if z.kind == "lobe":
        lobe = "lobes" if z.plural else "lobe"
        if group == "mid":
            if z.plural or side not in ("right", "left"):
                return None
            if side == "left":
                repl = "lingular" if modifier_position(a, z.end) else "lingula"
            else:
                repl = "middle lobe"
        else:
            repl = f"{_GROUP_LEVEL[group]} {lobe}"
        return (z.start, z.end, case_like(text, implied + repl))
    if z.kind == "lingula":
        return (z.start, z.end, case_like(text, ("" if a.sides else "left ")
                                          + f"{_GROUP_LEVEL[group]} lobe"))
    if z.kind == "zone":
        level = ZONE_LEVEL_RE.match(low).group(0)
        rest = text[len(level):]
        new_level = "middle" if group == "mid" and level == "middle" else _GROUP_LEVEL[group]
        if rest[:1].isalpha():
            rest = " " + rest
        return (z.start, z.end, case_like(text, new_level + rest))
    if z.kind == "adj":
        repl = "basal" if group == "bottom" and low == "basal" else _GROUP_ADJ[group]
        return (z.start, z.end, case_like(text, repl))
    # noun: keep "lung " before apex/base, drop it before hilum ("lung hila" is not said)
    has_lung = low.startswith("lung ")
    core = _GROUP_NOUN[group][1 if z.plural else 0]
    repl = ("lung " if has_lung and group != "mid" else "") + core
    return (z.start, z.end, case_like(text, repl))


def move_zone(a: Analysis, rng: np.random.Generator) -> list[str]:
    """Every zone phrase moved to each other zone group (groups in an order drawn from ``rng``);
    a group whose form does not exist for the caption is skipped."""
    if not a.zones:
        return []
    home = _ZONE_GROUP[a.zone]
    groups = [g for g in ("top", "mid", "bottom") if g != home]
    out = []
    for i in rng.permutation(len(groups)):
        edits = []
        for z in a.zones:
            e = _zone_to_group(a, z, groups[i])
            if e is None:
                edits = []
                break
            if e is not True:
                edits.append(e)
        if edits:
            out.append(apply_edits(a.text, edits))
    return out


def replace_finding(a: Analysis, rng: np.random.Generator) -> list[str]:
    """The first finding replaced by up to four clearly different findings that fit the
    sentence (number, article, size words, whether it is localised or intra-lobar)."""
    f = a.primary
    if f is None or not f.replaceable or f.canon in ("support_device", "fracture"):
        return []  # a tube or a rib is not "replaced" by a lung finding
    present = {x.canon for x in a.findings}
    taken = {_FINDING_GROUP.get(c, c) for c in present}
    localised = a.side is not None or a.zone is not None
    # pleural findings are not said of a lobe, the hila, the retrocardiac lung or "both lungs"
    intra_lobar = (any(z.kind in ("lobe", "lingula", "abbr") for z in a.zones)
                   or a.zone in ("perihilar", "retrocardiac", "diffuse")
                   or bool(_IN_LUNG_RE.search(a.text)))
    needs_article = bool(_INDEF_BEFORE_RE.search(a.text[max(0, f.start - 60):f.start]))
    # "small X" / "large X": only findings that have a size ("small edema" is not said)
    needs_size = any(re.split(r"[\s-]", s.text.lower())[0] in _SIZE_ADJECTIVES
                     or s.text.lower().endswith("sized")
                     or s.kind == "range" and not re.search(r"mild|severe|marked", s.text, _I)
                     for s in a.sizes if s.end <= f.start)
    candidates = []
    for canon, (singular, plural, countable) in _FINDING_TARGETS.items():
        if canon in present or _FINDING_GROUP[canon] in taken:
            continue
        if canon == "lung_opacity" and taken & _PARENCHYMAL:
            continue  # "opacity" is a hypernym of every parenchymal finding: still true
        if (localised and canon in _NOT_LOCALISED) or (intra_lobar and canon in _PLEURAL):
            continue
        surface = plural if f.plural else singular
        if surface is None or ((needs_article or needs_size) and not countable):
            continue
        candidates.append(surface)
    out = []
    for i in rng.permutation(len(candidates))[:4]:
        edits = [(f.start, f.end, case_like(f.text, candidates[i]))]
        for s in a.sizes:  # "mildly enlarged heart" -> "mild pleural effusion"
            word = s.text.lower()
            if word in _ADVERB_TO_ADJ and not a.text[s.end:f.start].strip():
                edits.append((s.start, s.end, case_like(s.text, _ADVERB_TO_ADJ[word])))
        out.append(apply_edits(a.text, edits))
    return out


def _drop_leading(a: Analysis, pos: int) -> int:
    """Skip articles, hedges and size words at ``pos`` (they do not survive a negation)."""
    text = a.text
    while True:
        start = pos + len(text[pos:]) - len(text[pos:].lstrip())
        m = _DROP_RE.match(text, start)
        if m:
            pos = m.end()
            continue
        s = next((s for s in a.sizes if s.start == start), None)
        if s is None:
            return start
        pos = s.end
        m = re.compile(r"[\s-]*(?:amounts?\s+of\s+)?").match(text, pos)
        pos = m.end()


def flip_negation(a: Analysis, rng: np.random.Generator) -> list[str]:
    """The negated caption affirmed (its cues removed) or the affirmative one negated ("no ...",
    "there is no ...", "... is not ..."), when the sentence has a form to do it."""
    del rng  # one way to negate or affirm
    f, text = a.primary, a.text
    if f is None:
        return []
    if a.negated:  # affirm: remove the cues that negate the primary finding
        edits = []
        for c in primary_negation_cues(a):
            if c.kind == "isnot":
                edits.append((c.start, c.end, case_like(c.text, c.text.split()[0])))
            else:
                end = c.end + len(text[c.end:]) - len(text[c.end:].lstrip())
                edits.append((c.start, end if not _NEG_AFFIRM[c.kind] else c.end,
                              case_like(c.text, _NEG_AFFIRM[c.kind])))
        return [apply_edits(text, edits)] if edits else []
    sentence = max([m.end() for m in _SENTENCE_RE.finditer(text, 0, f.start)], default=0)
    clause_end = min([b for b in a.bounds if b >= f.end], default=len(text))
    if _UNCERTAIN_RE.search(text, sentence, clause_end):
        return []  # "X cannot be excluded" is neither affirmed nor negated by a prefix
    s0 = sentence + len(text[sentence:]) - len(text[sentence:].lstrip())
    edits = [(t.start, t.end, "") for t in a.sides if t.kind == "comp"]
    if not f.replaceable:  # clause form: "the heart is (mildly) enlarged" -> "is not enlarged"
        m = _COPULA_RE.search(text, f.start, f.end)
        if m is None:
            return []
        end = _drop_leading(a, m.end())
        edits.append((m.end(), end, " not "))
        return [apply_edits(text, edits)]
    m = _THERE_IS_RE.match(text, s0)
    if m:
        edits.append((m.end(), _drop_leading(a, m.end()), "no "))
        return [apply_edits(text, edits)]
    if text[s0:s0 + 4].lower() == "the ":
        m = _COPULA_RE.search(text, f.end, clause_end)
        if m is None:
            return []
        edits.append((m.end(), _drop_leading(a, m.end()), " not "))
        return [apply_edits(text, edits)]
    # "No " + noun phrase: only when the sentence opens with the finding's noun phrase
    start = _drop_leading(a, s0)
    if (start >= len(text) or re.match(r"(?:no|both)\b", text[start:], _I)
            or _NP_BREAK_RE.search(text, start, f.start)):
        return []  # "No change in ...", "Both lobes show ...": no noun phrase to negate
    first_word = re.match(r"[\w-]*", text[start:]).group(0)
    no = "NO " if text[sentence:clause_end].isupper() else (
        "No " if text[s0:s0 + 1].isupper() else "no ")
    if first_word.isupper() and len(first_word) > 1:  # keep "RLL", "PICC"
        edits.append((s0, start, no))
    else:
        edits.append((s0, start + 1, no + text[start].lower()))
    return [apply_edits(text, edits)]


def swap_size(a: Analysis, rng: np.random.Generator) -> list[str]:
    """The first size word swapped for the opposite extreme, then for the middle class
    (moderate: small and large, or mild and severe, in an order drawn from ``rng``)."""
    if not a.sizes:
        return []
    s = a.sizes[0]
    low = s.text.lower()
    if s.kind == "range":
        lo = re.match(r"[a-z]+", low).group(0)
        severity = bool(re.search(r"mild|severe|marked", low))
        if lo == "moderate":
            targets = ["mild" if severity else "small"]
        else:
            targets = ["severe" if severity else "large"]
    else:
        word = re.split(r"[\s-]", low)[0]
        if word in MODERATE_WORDS:
            if word == "moderately":
                targets = ["mildly", "severely"]
            elif a.primary is not None and a.primary.canon not in _SIZED_FINDINGS:
                targets = ["mild", "severe"]
            else:
                targets = ["small", "large"]
            if rng.random() < 0.5:
                targets.reverse()
        else:
            targets = list(_SIZE_SWAP[word])
    return [apply_edits(a.text, [(s.start, s.end, case_like(s.text, t))]) for t in targets]


GENERATORS = {"laterality": swap_laterality, "zone": move_zone, "finding": replace_finding,
              "negation": flip_negation, "size": swap_size}

