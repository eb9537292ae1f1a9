"""Hard negative captions: perturb a region caption so that it no longer describes the region.

The negative-caption loss (``rmc_jax.losses.negative_caption_loss``) asks the model to prefer a
region's true caption over K perturbed versions of it. Each perturbation changes exactly one
attribute of the described finding:

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

Everything is driven by a lexicon of precompiled, case-insensitive, word-bounded regular
expressions that covers real report language (MS-CXR phrases, Chest ImaGenome sentences, IU /
MIMIC report wording), not only the synthetic templates. ``parse_caption`` exposes what the
lexicon finds in the canonical vocabulary of ``rmc_jax.data.schema``; every generated negative is
checked against it: its parse differs from the caption's in the attribute of its kind and in no
other (a negation may also drop the size). A kind that does not apply is skipped, never faked.

Pure Python, deterministic given the ``np.random.Generator`` passed in; the analysis of a
caption is cached, so the data pipeline can call this per example.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from typing import Iterable, Sequence

import numpy as np

from rmc_jax.data import schema

PERTURBATION_TYPES = ("laterality", "zone", "finding", "negation", "size")

_ATTRIBUTE_OF_KIND = {"laterality": "side", "zone": "zone", "finding": "finding",
                      "negation": "negated", "size": "size"}
_ATTRIBUTES = ("finding", "side", "zone", "size", "negated")


@dataclasses.dataclass(frozen=True)
class HardNegative:
    """One perturbed caption.

    Attributes:
      text: the perturbed caption (never equal to the original up to case and whitespace).
      kind: the perturbation applied, one of ``PERTURBATION_TYPES``.
    """

    text: str
    kind: str


# ----------------------------------------------------------------------------------------------
# Lexicon
# ----------------------------------------------------------------------------------------------
_I = re.IGNORECASE

# (canonical finding or None for a blocker, regex fragment, replaceable). Blockers consume text
# that would otherwise be misread (a pericardial effusion is not a pleural effusion); clause
# forms ("the heart is enlarged") are parsed but not replaced by a noun.
_OPACITY = r"opacit(?:y|ies)"
_FINDING_LEXICON = (
    (None, r"pericardial\s+effusions?", False),
    ("cardiomegaly", r"(?:heart(?:\s+size)?|cardiac\s+(?:silhouette|size))\s+(?:is|are)\s+"
                     r"(?:(?:again|now|still|also)\s+)?(?:not\s+)?"
                     r"(?:(?:mildly|moderately|severely|markedly|slightly|minimally)\s+)?enlarged",
     False),
    ("enlarged_cardiomediastinum", r"(?:cardiomediastinal\s+silhouette|mediastinum)\s+(?:is|are)\s+"
                                   r"(?:(?:again|now|still|also)\s+)?(?:not\s+)?"
                                   r"(?:(?:mildly|moderately|severely|markedly|slightly)\s+)?"
                                   r"(?:enlarged|widened)", False),
    ("enlarged_cardiomediastinum", r"(?:enlarged|widened)\s+cardiomediastinal\s+silhouette|"
                                   r"widen(?:ed|ing\s+of\s+the)\s+mediastinum|"
                                   r"mediastinal\s+(?:widening|enlargement)|"
                                   r"enlarged\s+cardiomediastinum|cardiomediastinal\s+enlargement",
     True),
    ("cardiomegaly", r"cardiomegaly|enlarged\s+heart(?:\s+size)?|cardiac\s+enlargement|"
                     r"enlarge(?:d|ment\s+of\s+the)\s+cardiac\s+silhouette", True),
    ("aortic_enlargement", r"aortic\s+(?:enlargement|dilatation|dilation|ectasia|aneurysm)|"
                           r"(?:enlarged|dilated|ectatic)\s+(?:thoracic\s+)?aorta", True),
    ("interstitial_lung_disease", r"interstitial\s+(?:lung\s+)?(?:disease|abnormalit(?:y|ies)|"
                                  r"markings|pattern|" + _OPACITY + r"|changes?)|ild", True),
    ("calcification", r"calcifications?|calcified\s+(?:granulomas?|nodules?|(?:lymph\s+)?nodes?)",
     True),
    ("nodule", r"nodular\s+(?:" + _OPACITY + r"|densit(?:y|ies))|"
               r"(?:pulmonary\s+|lung\s+)?(?:micro)?nodules?|granulomas?|granulomata", True),
    ("mass", r"(?:pulmonary\s+|lung\s+)?mass(?:es)?|tumou?rs?|neoplasms?", True),
    ("lung_lesion", r"(?:cavitary\s+|pulmonary\s+|lung\s+)?lesions?|cavit(?:y|ies)|cavitation",
     True),
    ("consolidation", r"(?:air[\s-]?space\s+)?consolidations?|"
                      r"consolidative\s+(?:" + _OPACITY + r"|changes?|process)", True),
    ("atelectasis", r"(?:(?:sub)?segmental\s+|plate[\s-]?like\s+|discoid\s+|linear\s+|"
                    r"band[\s-]?like\s+|dependent\s+|compressive\s+|passive\s+|rounded\s+|"
                    r"lobar\s+)?atelecta(?:sis|ses)|atelectatic\s+changes?|(?:lobar\s+)?collapse|"
                    r"volume\s+loss", True),
    ("pleural_effusion", r"(?:(?:layering|loculated|subpulmonic|parapneumonic)\s+)?"
                         r"(?:pleural\s+)?effusions?|pleural\s+fluid(?:\s+collections?)?|"
                         r"fluid\s+(?:in|within)\s+the\s+pleural\s+spaces?|hydrothora(?:x|ces)",
     True),
    ("pneumothorax", r"(?:hydro)?pneumothora(?:x|ces)|ptx", True),
    ("pleural_effusion", r"(?:costophrenic\s+(?:angle\s+)?)?blunting", False),
    ("edema", r"(?:pulmonary\s+|interstitial\s+|alveolar\s+)?o?edema|"
              r"(?:pulmonary\s+)?(?:vascular|venous)\s+(?:congestion|engorgement)|"
              r"(?:congestive\s+)?heart\s+failure|chf|fluid\s+overload", True),
    ("lung_opacity", r"(?:(?:air[\s-]?space|patchy|hazy|ill[\s-]defined|focal|streaky|linear|"
                     r"ground[\s-]glass|confluent)\s+)?(?:" + _OPACITY + r"|opacifications?|"
                     r"densit(?:y|ies))|air[\s-]?space\s+disease|haziness", True),
    ("pneumonia", r"(?:(?:aspiration|multifocal|lobar)\s+)?(?:broncho)?pneumonias?|"
                  r"infectious\s+process(?:es)?|infections?", True),
    ("infiltration", r"infiltrat(?:e|es|ion|ions)", True),
    ("fibrosis", r"(?:pulmonary\s+|interstitial\s+)?fibrosis|fibrotic\s+changes?|scarring|scars?",
     True),
    ("pleural_thickening", r"pleural[\s-]+parenchymal\s+(?:scarring|thickening)|"
                           r"pleural\s+thickening|pleural\s+plaques?", True),
    ("fracture", r"(?:rib\s+)?fractures?|fractured\s+ribs?", True),
    ("support_device", r"(?:endotracheal|et|nasogastric|ng|orogastric|og|chest|feeding|enteric|"
                       r"tracheostomy|dobhoff)\s+tubes?|(?:central\s+venous|central|picc|"
                       r"swan[\s-]ganz|dialysis)\s+(?:lines?|catheters?)|picc|pacemakers?|"
                       r"(?:pacer|pacemaker|icd)\s+(?:leads?|wires?)|support\s+devices?|"
                       r"sternotomy\s+wires?", True),
)
# Matched case-sensitively against the lower-cased caption (several times faster than
# IGNORECASE, whose alternatives cannot be skipped on their first character); _FINDING_RE_I is
# the fallback for text whose lower-casing changes its length.
_FINDING_SOURCE = (r"\b(?=[a-z])(?:" + "|".join(f"(?P<f{i}>{frag})" for i, (_, frag, _)
                                                 in enumerate(_FINDING_LEXICON)) + r")\b")
_FINDING_RE = re.compile(_FINDING_SOURCE)
_FINDING_RE_I = re.compile(_FINDING_SOURCE, _I)

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
_PLURAL_WORDS = frozenset({"pneumothoraces", "hydrothoraces", "granulomata", "cavities",
                           "opacities", "densities", "apices", "hila", "sulci"})

_SIDE_RE = re.compile(r"""\b(?=[a-z])(?:
    (?P<comp>\b(?:right|left)(?:[\s-]+sided)?\s+(?:(?:slightly|much|somewhat)\s+)?
        (?:greater|larger|more|worse|bigger|>)\s+(?:than\s+)?(?:the\s+)?(?:right|left)\b
        (?:[\s-]+sided|\s+side)?
      |\b(?:(?:slightly|much|somewhat)\s+)?(?:greater|larger|worse)\s+on\s+the\s+
        (?:right|left)\b(?:\s+side)?)
  | (?P<rland>\b(?:right|left)\s+(?:and|&)\s+(?:right|left)\b(?:[\s-]+sided)?)
  | (?P<bi>\bbi-?lateral(?:ly)?\b)
  | (?P<both>\bboth(?:\s+(?P<bothnoun>lungs|hemithoraces|sides)\b
        |(?=\s+(?:lung\s+)?(?:bases|apices|hila|costophrenic\s+angles|
            (?:upper|middle|mid|lower)[\s-]+(?:lung[\s-]+)?(?:lobes|zones|fields|lungs))\b)))
  | (?P<bizone>\bbi-?(?:basilar|basal|apical)\b)
  | (?P<abbr>(?-i:\b[RL][UML]L\b))
  | (?P<rl>(?-i:\b[RL]\b)(?=\.?\s+(?:upper|middle|mid|lower|lung|base|apex|apical|basilar|basal|
        hilum|hilar|perihilar|pleural|effusion|pneumothorax|costophrenic|hemithorax|side|sided|
        chest)\b))
  | (?P<side>\b(?:right|left)\b(?:[\s-]+sided\b)?)(?!\s+(?:in\s+place|behind|intact|untouched)\b)
)""", _I | re.X)
_BILATERAL_SIDE_KINDS = frozenset({"comp", "rland", "bi", "both", "bizone"})

_ZONE_RE = re.compile(r"""\b(?=[a-z])(?:
    (?P<abbr>(?-i:\b[RL][UML]L\b))
  | (?P<bizone>\bbi-?(?:basilar|basal|apical)\b)
  | (?P<lobe>\b(?:upper|middle|lower)\s+lobes?\b)
  | (?P<lingula>\blingula(?:r)?\b)
  | (?P<zone>\b(?:upper|middle|mid|lower)(?:(?:[\s-]*lung)?[\s-]+(?:zones?|fields?|regions?)
        |[\s-]*lungs?)\b)
  | (?P<adj>\b(?:apical|basal|basilar|perihilar|parahilar|infrahilar|hilar|retrocardiac|diffuse|
        widespread)\b)
  | (?P<noun>\b(?:lung\s+)?(?:apex|apices|bases?|hil(?:um|a|us)|
        (?:costophrenic|cp|cardiophrenic)\s+(?:angles?|sulc(?:us|i)))\b)
)""", _I | re.X)
_LEVEL_ZONE = {"upper": "upper", "mid": "middle", "middle": "middle", "lower": "lower",
               "u": "upper", "m": "middle", "l": "lower"}
_ADJ_ZONE = {"apical": "apical", "basal": "basal", "basilar": "basal", "perihilar": "perihilar",
             "parahilar": "perihilar", "infrahilar": "perihilar", "hilar": "perihilar",
             "retrocardiac": "retrocardiac", "diffuse": "diffuse", "widespread": "diffuse"}
_ZONE_GROUP = {"upper": "top", "apical": "top", "middle": "mid", "perihilar": "mid",
               "lower": "bottom", "basal": "bottom", "retrocardiac": "bottom", "diffuse": "diffuse"}
_SINGULAR = {"apices": "apex", "bases": "base", "hila": "hilum", "angles": "angle",
             "sulci": "sulcus", "lobes": "lobe", "lungs": "lung", "zones": "zone",
             "fields": "field", "regions": "region", "hemithoraces": "hemithorax", "sides": "side"}
_PLURAL = {v: k for k, v in _SINGULAR.items()}
_PLURAL.update(hilus="hila")

_SIZE_RE = re.compile(r"""\b(?=[a-z])(?:
    (?P<range>(?:small|mild|minimal|trace|tiny|moderate)(?:-to-|\s*-\s*|\s+to\s+)
        (?:moderate|large|severe|marked|medium)(?:[\s-]sized)?)
  | (?P<word>(?:small|tiny|trace|minimal|mild|slight|moderate|medium|large|big|huge|massive|
        extensive|sizable|sizeable|severe|marked|mildly|slightly|minimally|moderately|severely|
        markedly|extensively)(?:[\s-]sized)?)
)\b""", _I | re.X)
_SMALL_WORDS = frozenset({"small", "tiny", "trace", "minimal", "mild", "slight", "mildly",
                          "slightly", "minimally"})
_MODERATE_WORDS = frozenset({"moderate", "medium", "moderately"})
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

_NEG_RE = re.compile(r"""\b(?=[a-z])(?:
    (?P<noev>no\s+(?:(?:radiographic|definite|convincing)\s+)?(?:evidence|signs?|findings?)\s+
        (?:of|to\s+suggest|suggestive\s+of|for))
  | (?P<nolonger>no\s+longer)
  | (?P<no>no)(?!\s+(?:(?:significant|interval|substantial|appreciable)\s+)?
        (?:change|changes|increase|decrease|difference)\b)
  | (?P<without>without(?:\s+(?:evidence|signs?)\s+of)?)
  | (?P<negfor>negative\s+for)
  | (?P<absence>absence\s+of)
  | (?P<absent>absent)
  | (?P<isnot>(?:is|are|was|were|has|have|does|do)\s+not)(?!\s+(?:be\s+)?(?:excluded|ruled\s+out)\b)
)\b""", _I | re.X)
_NEG_PRE = frozenset({"noev", "no", "without", "negfor", "absence"})
_NEG_AFFIRM = {"noev": "", "nolonger": "", "no": "", "without": "with",
               "negfor": "positive for", "absence": "presence of", "absent": "present"}

_CLAUSE_RE = re.compile(r"[.;:!?\n]|\b(?:but|however|although|though|whereas)\b", _I)
_SENTENCE_RE = re.compile(r"[.;!?\n]")
_THERE_IS_RE = re.compile(r"there\s+(?:is|are|was|were|has\s+been|have\s+been)\s+", _I)
_COPULA_RE = re.compile(r"\b(?:is|are|was|were)\b", _I)
_VERB_RE = re.compile(r"\b(?:is|are|was|were|has|have|had|seen|noted|appears?|remains?)\b", _I)
_DROP_RE = re.compile(r"(?:an?|some|possible|probable|questionable|suspected|likely|multiple|"
                      r"several|numerous|few|scattered)\s+", _I)
_INDEF_BEFORE_RE = re.compile(r"\b(an?)\s+(?:[\w-]+\s+){0,4}$", _I)
_ARTICLE_TAIL_RE = re.compile(r"\b(an?)(\s+)$", _I)
_IN_LUNG_RE = re.compile(r"\b(?:in|within|throughout)\s+(?:the\s+|both\s+)?"
                         r"(?:(?:right|left|upper|lower|mid|middle)[\s-]+)*lungs?\b", _I)
_UNCERTAIN_RE = re.compile(r"\b(?:cannot|can\s+not|not)\s+be\s+(?:excluded|ruled\s+out)\b", _I)
_NP_BREAK_RE = re.compile(r"\b(?:is|are|was|were|has|have|had|shows?|demonstrates?|seen|noted|"
                          r"appears?|remains?)\b|[,;:]", _I)
_DESCRIPTOR_WORDS = frozenset({"airspace", "air-space", "patchy", "hazy", "focal", "streaky",
                               "segment", "region", "linear", "ill-defined", "subsegmental"})


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Tok:
    """One lexicon hit: span, surface, kind of hit (regex alternative), canonical value."""

    start: int
    end: int
    text: str
    kind: str
    canon: str | None
    plural: bool = False
    replaceable: bool = True


@dataclasses.dataclass(frozen=True)
class _Analysis:
    text: str
    findings: tuple
    sides: tuple
    zones: tuple
    sizes: tuple
    negs: tuple
    bounds: tuple
    primary: _Tok | None
    side: str | None
    zone: str | None
    size: str | None
    negated: bool

    @property
    def attrs(self) -> dict:
        return {"finding": self.primary.canon if self.primary else None, "side": self.side,
                "zone": self.zone, "size": self.size, "negated": self.negated}

    def clause(self, pos: int) -> int:
        return bisect.bisect_right(self.bounds, pos)


def _last_word(text: str) -> str:
    return _WORD_SPLIT_RE.split(text.strip().lower())[-1]


def _is_plural_word(word: str) -> bool:
    return word in _PLURAL_WORDS or (word.endswith("s")
                                     and not word.endswith(("sis", "ss", "us", "xis")))


def _size_canon(text: str, kind: str) -> str:
    if kind == "range":
        return "moderate"
    word = re.split(r"[\s-]", text.lower())[0]
    if word in _SMALL_WORDS:
        return "small"
    return "moderate" if word in _MODERATE_WORDS else "large"


def _zone_canon(kind: str, text: str) -> str:
    low = text.lower()
    if kind == "abbr":
        return _LEVEL_ZONE[low[1]]
    if kind == "bizone":
        return "apical" if "apical" in low else "basal"
    if kind in ("lobe", "zone"):
        return _LEVEL_ZONE[re.match(r"[a-z]+", low).group(0)]
    if kind == "lingula":
        return "middle"
    if kind == "adj":
        return _ADJ_ZONE[low]
    core = low.split()[-1] if not low.split()[-1].startswith(("angle", "sulc")) else "angle"
    if core in ("apex", "apices"):
        return "apical"
    return "perihilar" if core.startswith("hil") else "basal"


def _side_canon(kind: str, text: str) -> str:
    if kind in _BILATERAL_SIDE_KINDS:
        return "bilateral"
    if kind in ("abbr", "rl"):
        return "right" if text[0] in "Rr" else "left"
    return "right" if text.lower().startswith("right") else "left"


@functools.lru_cache(maxsize=1 << 15)
def _analyse(text: str) -> _Analysis:
    findings = []
    low = text.lower()
    scan = _FINDING_RE.finditer(low) if len(low) == len(text) else _FINDING_RE_I.finditer(text)
    for m in scan:
        canon, _, replaceable = _FINDING_LEXICON[int(m.lastgroup[1:])]
        if canon is not None:
            surface = text[m.start():m.end()]
            findings.append(_Tok(m.start(), m.end(), surface, "finding", canon,
                                 _is_plural_word(_last_word(surface)), replaceable))
    sides = tuple(_Tok(m.start(), m.end(), m.group(), m.lastgroup,
                       _side_canon(m.lastgroup, m.group())) for m in _SIDE_RE.finditer(text))
    zones = tuple(_Tok(m.start(), m.end(), m.group(), m.lastgroup,
                       _zone_canon(m.lastgroup, m.group()),
                       m.lastgroup in ("lobe", "zone", "noun")
                       and _last_word(m.group()) in _SINGULAR) for m in _ZONE_RE.finditer(text))
    sizes = tuple(_Tok(m.start(), m.end(), m.group(), m.lastgroup,
                       _size_canon(m.group(), m.lastgroup)) for m in _SIZE_RE.finditer(text))
    negs = tuple(_Tok(m.start(), m.end(), m.group(), m.lastgroup, None)
                 for m in _NEG_RE.finditer(text))
    bounds = tuple(m.start() for m in _CLAUSE_RE.finditer(text))
    primary = findings[0] if findings else None

    if any(t.kind in _BILATERAL_SIDE_KINDS for t in sides):
        side = "bilateral"
    elif sides:
        side = sides[0].canon
    else:  # anatomy implies the side: lingula (left), middle lobe (right), bases/apices (both)
        side = None
        for z in zones:
            if z.kind == "lingula":
                side = "left"
            elif z.kind == "lobe" and z.canon == "middle" and not z.plural:
                side = "right"
            elif z.plural:
                side = "bilateral"
            if side:
                break

    negated = bool(_cues_for(primary, negs, bounds)) if primary else bool(negs)
    return _Analysis(text, tuple(findings), sides, zones, sizes, negs, bounds, primary, side,
                     zones[0].canon if zones else None, sizes[0].canon if sizes else None,
                     negated)


def _cues_for(f: _Tok, negs: tuple, bounds: tuple) -> list:
    """Cues that negate finding ``f``: before it (no, without, ...) or after it (is not, no
    longer, absent) in the same clause."""
    clause = bisect.bisect_right(bounds, f.start)
    return [c for c in negs if bisect.bisect_right(bounds, c.start) == clause
            and ((c.kind in _NEG_PRE and c.end <= f.start)
                 or (c.kind not in _NEG_PRE and c.start >= f.start))]


def _negation_cues(a: _Analysis) -> list:
    return _cues_for(a.primary, a.negs, a.bounds) if a.primary else []


# ----------------------------------------------------------------------------------------------
# Editing helpers
# ----------------------------------------------------------------------------------------------
def _case_like(src: str, repl: str) -> str:
    """Give ``repl`` the capitalisation of ``src``'s first letter. An acronym ("PICC line",
    "RLL") says nothing about the case of what replaces it; ALL-CAPS captions and sentence
    openers are handled by ``_apply``."""
    if not repl or not src or not src[0].isupper():
        return repl
    first = _WORD_SPLIT_RE.split(src, 1)[0]
    if len(first) > 1 and first.isupper():
        return repl
    return repl[0].upper() + repl[1:]


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip()
    return not before or before[-1] in ".!?;:\n"


def _apply(text: str, edits: Iterable[tuple]) -> str | None:
    """Apply non-overlapping (start, end, replacement) edits; fix a/an agreement in front of a
    replacement and carry a deleted sentence opener's capital letter to what follows."""
    out: list[str] = []
    pos, cap = 0, False
    all_caps = text.isupper() and sum(c.isalpha() for c in text) >= 4

    def push(piece: str):
        nonlocal cap
        if cap and piece.strip():
            i = len(piece) - len(piece.lstrip())
            piece = piece[:i] + piece[i].upper() + piece[i + 1:]
            cap = False
        out.append(piece)

    for start, end, repl in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < pos:
            return None
        push(text[pos:start])
        if repl and all_caps:
            repl = repl.upper()
        elif repl and text[start:start + 1].isupper() and _sentence_start(text, start):
            repl = repl[0].upper() + repl[1:]
        if repl:
            prefix = "".join(out)
            m = _ARTICLE_TAIL_RE.search(prefix)
            if m:
                article = "an" if repl[0].lower() in "aeiou" else "a"
                out = [prefix[:m.start()] + _case_like(m.group(1), article) + m.group(2)]
            push(repl)
        elif _sentence_start(text, start) and text[start:end][:1].isupper():
            cap = True
        pos = end
    push(text[pos:])
    return _tidy("".join(out))


_SPACES_RE = re.compile(r"\s+")
_SPACE_PUNCT_RE = re.compile(r"\s+([,.;:!?])")
_DANGLING_COMMA_RE = re.compile(r",\s*([,.;:!?]|$)")
_LEADING_PUNCT_RE = re.compile(r"^[\s,;:]+")
_WORD_SPLIT_RE = re.compile(r"[\s-]+")
_NEXT_WORD_RE = re.compile(r"\s*([\w-]*)")
_LAST_WORD_RE = re.compile(r"(.*?)([A-Za-z]+)$", re.S)


def _tidy(text: str) -> str:
    text = _SPACE_PUNCT_RE.sub(r"\1", _SPACES_RE.sub(" ", text))
    return _LEADING_PUNCT_RE.sub("", _DANGLING_COMMA_RE.sub(r"\1", text)).strip()


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _singular_last(text: str) -> str:
    head, word = _LAST_WORD_RE.match(text).groups()
    low = word.lower()
    if low in _SINGULAR:
        new = _SINGULAR[low]
    elif low.endswith("thoraces"):
        new = low[:-3] + "x"
    elif low.endswith("ies"):
        new = low[:-3] + "y"
    elif low.endswith("sses"):
        new = low[:-2]
    elif _is_plural_word(low):
        new = low[:-1]
    else:
        return text
    return head + _case_like(word, new)


def _plural_last(text: str) -> str:
    head, word = _LAST_WORD_RE.match(text).groups()
    low = word.lower()
    if low in _PLURAL:
        new = _PLURAL[low]
    elif low.endswith("thorax"):
        new = low[:-1] + "ces"
    elif low.endswith("y"):
        new = low[:-1] + "ies"
    elif low.endswith("ss"):
        new = low + "es"
    else:
        new = low + "s"
    return head + _case_like(word, new)


def _next_word(text: str, pos: int) -> tuple[int, str]:
    m = _NEXT_WORD_RE.match(text, pos)
    return m.start(1), m.group(1).lower()


def _modifier_position(a: _Analysis, end: int) -> bool:
    """True when the zone phrase ending at ``end`` modifies a following finding ("lingular
    opacity"), False when it is a noun ("in the lingula")."""
    start, word = _next_word(a.text, end)
    return word in _DESCRIPTOR_WORDS or any(f.start == start for f in a.findings)


# ----------------------------------------------------------------------------------------------
# Perturbations, one generator per kind; each returns candidate texts in preference order
# ----------------------------------------------------------------------------------------------
_OTHER_SIDE = {"right": "left", "left": "right"}


def _zone_for_side(a: _Analysis, z: _Tok, side: str, singular: bool) -> str | None:
    """Replacement for a zone phrase once the finding moves to ``side`` (None: unchanged)."""
    text = z.text
    if z.kind == "lobe" and z.canon == "middle" and side == "left":
        return _case_like(text, "lingular" if _modifier_position(a, z.end) else "lingula")
    if z.kind == "lingula" and side == "right":
        return _case_like(text, "middle lobe" if a.sides else "right middle lobe")
    if singular and z.plural:
        return _singular_last(text)
    return None


def _laterality(a: _Analysis, rng: np.random.Generator) -> list[str]:
    if a.side is None:
        return []
    text, out = a.text, []
    if a.side in ("right", "left"):
        new = _OTHER_SIDE[a.side]
        edits = []
        for t in a.sides:
            if t.kind == "side":
                word = re.match(r"[a-z]+", t.text, _I).group(0)
                edits.append((t.start, t.start + len(word),
                              _case_like(word, _OTHER_SIDE[t.canon])))
            elif t.kind == "rl":
                edits.append((t.start, t.end, "L" if t.text == "R" else "R"))
            elif t.kind == "abbr":
                flipped = ("L" if t.text[0] == "R" else "R") + t.text[1:]
                if flipped == "LML":  # RML -> the lingula (sentence case is _apply's job)
                    flipped = "lingular" if _modifier_position(a, t.end) else "lingula"
                edits.append((t.start, t.end, flipped))
        for z in a.zones:
            repl = _zone_for_side(a, z, new, False)
            if repl is not None:
                edits.append((z.start, z.end, repl))
        if edits:
            out.append(_apply(text, edits))
        out.extend(_to_bilateral(a))
        return out
    # bilateral -> right / left
    markers = [t for t in a.sides if t.kind in _BILATERAL_SIDE_KINDS]
    paired = [f for f in a.findings if f.canon in _PAIRED and f.plural and f.replaceable]
    for new in (("right", "left") if rng.random() < 0.5 else ("left", "right")):
        edits = []
        for t in markers:
            low = t.text.lower()
            if t.kind == "comp":  # trailing clause goes; "Left greater than right X" -> "Right X"
                trailing = text[:t.start].rstrip().endswith(",") or any(
                    f.end <= t.start for f in a.findings)
                edits.append((t.start, t.end, "" if trailing else _case_like(t.text, new)))
            elif t.kind == "rland":
                edits.append((t.start, t.end,
                              _case_like(t.text, new + ("-sided" if "sided" in low else ""))))
            elif t.kind == "bi":
                edits.append((t.start, t.end, _case_like(
                    t.text, f"on the {new}" if low.endswith("ly") else new)))
            elif t.kind == "both":
                noun = t.text[4:].strip()
                repl = f"the {new}" + (" " + _singular_last(noun) if noun else "")
                edits.append((t.start, t.end, _case_like(t.text, repl)))
            elif t.kind == "bizone":
                edits.append((t.start, t.end,
                              _case_like(t.text, f"{new} {re.sub(r'^bi-?', '', low)}")))
        bizone_spans = {(t.start, t.end) for t in markers if t.kind == "bizone"}
        inserted = False
        for z in a.zones:
            if (z.start, z.end) in bizone_spans:
                continue
            repl = _zone_for_side(a, z, new, True)
            if z.plural and not markers and not inserted:
                repl = f"{new} " + (repl if repl is not None else z.text)
                inserted = True
            if repl is not None:
                edits.append((z.start, z.end, repl))
        for f in paired:
            edits.append((f.start, f.end, _singular_last(f.text)))
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
            out.append(_apply(text, edits))
    return out


def _to_bilateral(a: _Analysis) -> list[str]:
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
    edits = [(t.start, t.end, _case_like(word, "bilateral"))]
    f = a.primary
    if f is not None and f.replaceable and f.start > t.start and not f.plural and f.canon in (
            "nodule", "mass", "pleural_effusion", "pneumothorax", "lung_opacity", "infiltration",
            "lung_lesion", "calcification"):
        edits.append((f.start, f.end, _plural_last(f.text)))
    return [_apply(a.text, edits)]


_GROUP_LEVEL = {"top": "upper", "mid": "mid", "bottom": "lower"}
_GROUP_ADJ = {"top": "apical", "mid": "perihilar", "bottom": "basilar"}
_GROUP_NOUN = {"top": ("apex", "apices"), "mid": ("hilum", "hila"), "bottom": ("base", "bases")}


def _zone_to_group(a: _Analysis, z: _Tok, group: str) -> tuple | None | bool:
    """Edit moving zone phrase ``z`` into ``group``; True when already there; None when the
    anatomy or grammar has no such form (no left middle lobe, no plural lingula, ...)."""
    if _ZONE_GROUP[z.canon] == group:
        return True
    text, low, side = z.text, z.text.lower(), a.side
    implied = "" if a.sides else (f"{side} " if side in ("right", "left") else "")
    if z.kind == "abbr":
        if group == "mid" and text[0] == "L":
            repl = "lingular" if _modifier_position(a, z.end) else "lingula"
            return (z.start, z.end, repl)
        return (z.start, z.end, text[0] + {"top": "U", "mid": "M", "bottom": "L"}[group] + "L")
    if z.kind == "bizone":
        prefix = re.match(r"bi-?", low).group(0)
        repl = {"top": prefix + "apical", "mid": "bilateral perihilar",
                "bottom": prefix + ("basal" if "basal" in low else "basilar")}[group]
        return (z.start, z.end, _case_like(text, repl))
    if z.kind == "lobe":
        lobe = "lobes" if z.plural else "lobe"
        if group == "mid":
            if z.plural or side not in ("right", "left"):
                return None
            if side == "left":
                repl = "lingular" if _modifier_position(a, z.end) else "lingula"
            else:
                repl = "middle lobe"
        else:
            repl = f"{_GROUP_LEVEL[group]} {lobe}"
        return (z.start, z.end, _case_like(text, implied + repl))
    if z.kind == "lingula":
        return (z.start, z.end, _case_like(text, ("" if a.sides else "left ")
                                           + f"{_GROUP_LEVEL[group]} lobe"))
    if z.kind == "zone":
        level = re.match(r"[a-z]+", low).group(0)
        rest = text[len(level):]
        new_level = "middle" if group == "mid" and level == "middle" else _GROUP_LEVEL[group]
        if rest[:1].isalpha():
            rest = " " + rest
        return (z.start, z.end, _case_like(text, new_level + rest))
    if z.kind == "adj":
        repl = "basal" if group == "bottom" and low == "basal" else _GROUP_ADJ[group]
        return (z.start, z.end, _case_like(text, repl))
    # noun: keep "lung " before apex/base, drop it before hilum ("lung hila" is not said)
    has_lung = low.startswith("lung ")
    core = _GROUP_NOUN[group][1 if z.plural else 0]
    repl = ("lung " if has_lung and group != "mid" else "") + core
    return (z.start, z.end, _case_like(text, repl))


def _zone(a: _Analysis, rng: np.random.Generator) -> list[str]:
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
            out.append(_apply(a.text, edits))
    return out


def _finding(a: _Analysis, rng: np.random.Generator) -> list[str]:
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
        edits = [(f.start, f.end, _case_like(f.text, candidates[i]))]
        for s in a.sizes:  # "mildly enlarged heart" -> "mild pleural effusion"
            word = s.text.lower()
            if word in _ADVERB_TO_ADJ and not a.text[s.end:f.start].strip():
                edits.append((s.start, s.end, _case_like(s.text, _ADVERB_TO_ADJ[word])))
        out.append(_apply(a.text, edits))
    return out


def _drop_leading(a: _Analysis, pos: int) -> int:
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


def _negation(a: _Analysis, rng: np.random.Generator) -> list[str]:
    del rng  # one way to negate or affirm
    f, text = a.primary, a.text
    if f is None:
        return []
    if a.negated:  # affirm: remove the cues that negate the primary finding
        edits = []
        for c in _negation_cues(a):
            if c.kind == "isnot":
                edits.append((c.start, c.end, _case_like(c.text, c.text.split()[0])))
            else:
                end = c.end + len(text[c.end:]) - len(text[c.end:].lstrip())
                edits.append((c.start, end if not _NEG_AFFIRM[c.kind] else c.end,
                              _case_like(c.text, _NEG_AFFIRM[c.kind])))
        return [_apply(text, edits)] if edits else []
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
        return [_apply(text, edits)]
    m = _THERE_IS_RE.match(text, s0)
    if m:
        edits.append((m.end(), _drop_leading(a, m.end()), "no "))
        return [_apply(text, edits)]
    if text[s0:s0 + 4].lower() == "the ":
        m = _COPULA_RE.search(text, f.end, clause_end)
        if m is None:
            return []
        edits.append((m.end(), _drop_leading(a, m.end()), " not "))
        return [_apply(text, edits)]
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
    return [_apply(text, edits)]


def _size(a: _Analysis, rng: np.random.Generator) -> list[str]:
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
        if word in _MODERATE_WORDS:
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
    return [_apply(a.text, [(s.start, s.end, _case_like(s.text, t))]) for t in targets]


_GENERATORS = {"laterality": _laterality, "zone": _zone, "finding": _finding,
               "negation": _negation, "size": _size}


def _consistent(kind: str, before: dict, after: dict) -> bool:
    """The negative changes the attribute of its kind and nothing else (a negation may drop the
    size: "no small pneumothorax" is not what "no pneumothorax" means)."""
    changed = {k for k in _ATTRIBUTES if before[k] != after[k]}
    attr = _ATTRIBUTE_OF_KIND[kind]
    if kind == "negation" and changed == {"negated", "size"}:
        return after["size"] is None
    # a vaguer caption ("pleural effusion" for "bilateral pleural effusions") is not a negative
    return changed == {attr} and after[attr] is not None


class _Pool:
    """Candidate negatives of one caption per kind, checked lazily (only those handed out are
    parsed again) and deduplicated in the order they are taken."""

    def __init__(self, caption: str, rng: np.random.Generator, kinds: Sequence[str]):
        unknown = [k for k in kinds if k not in _GENERATORS]
        if unknown:
            raise ValueError(f"unknown perturbation kinds {unknown}; expected a subset of "
                             f"{PERTURBATION_TYPES}")
        a = _analyse(caption)
        self._before = a.attrs
        self._seen = {_normalise(caption)}
        self._candidates = {kind: _GENERATORS[kind](a, rng) for kind in kinds}
        self._next = dict.fromkeys(kinds, 0)

    def take(self, kind: str) -> str | None:
        """The next valid, unseen negative of ``kind``; None when the kind is exhausted."""
        candidates = self._candidates[kind]
        while self._next[kind] < len(candidates):
            text = candidates[self._next[kind]]
            self._next[kind] += 1
            if not text or _normalise(text) in self._seen:
                continue
            if _consistent(kind, self._before, _analyse(text).attrs):
                self._seen.add(_normalise(text))
                return text
        return None


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def parse_caption(caption: str) -> dict:
    """What the lexicon finds in a caption, in the canonical vocabulary of ``schema``.

    Returns:
      ``{'finding': name in schema.FINDINGS or None, 'side': name in schema.SIDES or None,
      'zone': name in schema.ZONES or None, 'size': name in schema.SIZES or None,
      'negated': bool}``. The finding is the first one mentioned; the side is 'bilateral' when a
      bilateral word (bilateral, both, bibasilar, "left greater than right", ...) is present,
      otherwise the first side word, otherwise what the anatomy implies (lingula: left, middle
      lobe: right, plural bases/apices/lobes: bilateral); zone and size are the first mentioned
      (mild/severe map to small/large); ``negated`` says whether a negation cue in the finding's
      clause negates it (no, without, negative for, is not seen, no longer, absent).
    """
    return _analyse(caption).attrs


def caption_attribute_ids(caption: str) -> dict:
    """``parse_caption`` as schema indices (-1 unknown): finding_id, side_id, zone_id, size_id,
    negated (0/1); what ``schema.Example``'s per-region id arrays hold."""
    p = parse_caption(caption)
    return {"finding_id": schema.FINDINGS.index(p["finding"]) if p["finding"] else -1,
            "side_id": schema.side_id(p["side"]), "zone_id": schema.zone_id(p["zone"]),
            "size_id": schema.size_id(p["size"]), "negated": int(p["negated"])}


def perturbations(caption: str, rng: np.random.Generator, *,
                  kinds: Sequence[str] = PERTURBATION_TYPES,
                  per_kind: int = 1) -> list[HardNegative]:
    """Every applicable single perturbation of ``caption``, at most ``per_kind`` per kind.

    Args:
      caption: a region caption or report sentence.
      rng: source of the choices (which other finding, zone, side, ...); same state, same output.
      kinds: the perturbation kinds to try, in output order (subset of PERTURBATION_TYPES).
      per_kind: how many distinct negatives each kind may contribute.
    Returns:
      HardNegatives, grouped by kind in ``kinds`` order; a kind that does not apply to the
      caption (no side word for laterality, no size word for size, ...) contributes none. All
      texts are distinct and differ from the caption up to case and whitespace.
    """
    pool = _Pool(caption, rng, kinds)
    out = []
    for kind in kinds:
        for _ in range(per_kind):
            text = pool.take(kind)
            if text is None:
                break
            out.append(HardNegative(text, kind))
    return out


def hard_negatives(caption: str, k: int, rng: np.random.Generator, *,
                   kinds: Sequence[str] = PERTURBATION_TYPES) -> list[HardNegative]:
    """Up to ``k`` distinct hard negatives of ``caption``, spread over the perturbation kinds.

    Kinds are visited round-robin in an order drawn from ``rng``: first one negative from each
    applicable kind, then second variants, and so on. Fewer than ``k`` come back only when the
    caption has fewer possible perturbations (the caller pads and masks, see
    ``losses.negative_caption_loss``'s ``neg_mask``).
    """
    if k <= 0:
        return []
    pool = _Pool(caption, rng, kinds)
    live = [kinds[i] for i in rng.permutation(len(kinds))]
    out = []
    while len(out) < k and live:
        for kind in list(live):
            if len(out) == k:
                break
            text = pool.take(kind)
            if text is None:
                live.remove(kind)
            else:
                out.append(HardNegative(text, kind))
    return out
