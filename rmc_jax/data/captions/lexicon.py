"""The caption lexicon: what a caption or report sentence says, in the schema's vocabulary.

Precompiled, case-insensitive, word-bounded regular expressions cover real report language
(MS-CXR phrases, Chest ImaGenome sentences, IU / MIMIC report wording), not only the synthetic
templates: findings (with blockers for look-alikes such as a pericardial effusion), patient sides
(right / left / bilateral, "-sided", "left greater than right", lobe abbreviations, R / L before
anatomy), zones (lobes, zones, apices, bases, hila, the lingula...), size and severity words,
and negation cues (no, without, negative for, is not, no longer, absent).

``analyse(text)`` -> ``Analysis``: every hit as a ``Token`` (span, surface, which alternative,
canonical value) and the caption's attributes (the first finding; its side, zone, size; whether
a cue in its clause negates it), cached. ``parse_caption`` and ``caption_attribute_ids`` give the
attributes to callers.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re

from rmc_jax.data import schema

_I = re.IGNORECASE
WORD_SPLIT_RE = re.compile(r"[\s-]+")

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------
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
BILATERAL_SIDE_KINDS = frozenset({"comp", "rland", "bi", "both", "bizone"})

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
# The level word that opens a lobe or zone hit ("mid" of "midlung zone").
ZONE_LEVEL_RE = re.compile(r"upper|middle|mid|lower")
_LEVEL_ZONE = {"upper": "upper", "mid": "middle", "middle": "middle", "lower": "lower",
               "u": "upper", "m": "middle", "l": "lower"}
_ADJ_ZONE = {"apical": "apical", "basal": "basal", "basilar": "basal", "perihilar": "perihilar",
             "parahilar": "perihilar", "infrahilar": "perihilar", "hilar": "perihilar",
             "retrocardiac": "retrocardiac", "diffuse": "diffuse", "widespread": "diffuse"}
SINGULAR = {"apices": "apex", "bases": "base", "hila": "hilum", "angles": "angle",
            "sulci": "sulcus", "lobes": "lobe", "lungs": "lung", "zones": "zone",
            "fields": "field", "regions": "region", "hemithoraces": "hemithorax", "sides": "side"}
PLURAL = {v: k for k, v in SINGULAR.items()}
PLURAL.update(hilus="hila")

_SIZE_RE = re.compile(r"""\b(?=[a-z])(?:
    (?P<range>(?:small|mild|minimal|trace|tiny|moderate)(?:-to-|\s*-\s*|\s+to\s+)
        (?:moderate|large|severe|marked|medium)(?:[\s-]sized)?)
  | (?P<word>(?:small|tiny|trace|minimal|mild|slight|moderate|medium|large|big|huge|massive|
        extensive|sizable|sizeable|severe|marked|mildly|slightly|minimally|moderately|severely|
        markedly|extensively)(?:[\s-]sized)?)
)\b""", _I | re.X)
_SMALL_WORDS = frozenset({"small", "tiny", "trace", "minimal", "mild", "slight", "mildly",
                          "slightly", "minimally"})
MODERATE_WORDS = frozenset({"moderate", "medium", "moderately"})

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
PRECEDING_NEGATIONS = frozenset({"noev", "no", "without", "negfor", "absence"})

_CLAUSE_RE = re.compile(r"[.;:!?\n]|\b(?:but|however|although|though|whereas)\b", _I)


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Token:
    """One lexicon hit: span, surface, kind of hit (regex alternative), canonical value."""

    start: int
    end: int
    text: str
    kind: str
    canon: str | None
    plural: bool = False
    replaceable: bool = True


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What the lexicon found in ``text``: the hits of each vocabulary (``findings``, ``sides``,
    ``zones``, ``sizes``, negation cues ``negs``), the clause boundaries ``bounds``, the first
    finding ``primary`` and the caption's side, zone, size and ``negated``."""

    text: str
    findings: tuple
    sides: tuple
    zones: tuple
    sizes: tuple
    negs: tuple
    bounds: tuple
    primary: Token | None
    side: str | None
    zone: str | None
    size: str | None
    negated: bool

    @property
    def attrs(self) -> dict:
        """The attributes ``parse_caption`` returns."""
        return {"finding": self.primary.canon if self.primary else None, "side": self.side,
                "zone": self.zone, "size": self.size, "negated": self.negated}


def last_word(text: str) -> str:
    """The last word of ``text``, lower case (hyphens split words)."""
    return WORD_SPLIT_RE.split(text.strip().lower())[-1]


def is_plural_word(word: str) -> bool:
    """Whether a (lower-case) noun is plural: known plurals, or an -s that is not -sis/-ss/..."""
    return word in _PLURAL_WORDS or (word.endswith("s")
                                     and not word.endswith(("sis", "ss", "us", "xis")))


def _size_of(text: str, kind: str) -> str:
    """The size class of a size hit (a range such as "small to moderate" is 'moderate')."""
    if kind == "range":
        return "moderate"
    word = re.split(r"[\s-]", text.lower())[0]
    if word in _SMALL_WORDS:
        return "small"
    return "moderate" if word in MODERATE_WORDS else "large"


def _zone_of(kind: str, text: str) -> str:
    """The schema zone of a zone hit of alternative ``kind``."""
    low = text.lower()
    if kind == "abbr":
        return _LEVEL_ZONE[low[1]]
    if kind == "bizone":
        return "apical" if "apical" in low else "basal"
    if kind in ("lobe", "zone"):
        return _LEVEL_ZONE[ZONE_LEVEL_RE.match(low).group(0)]
    if kind == "lingula":
        return "middle"
    if kind == "adj":
        return _ADJ_ZONE[low]
    core = low.split()[-1] if not low.split()[-1].startswith(("angle", "sulc")) else "angle"
    if core in ("apex", "apices"):
        return "apical"
    return "perihilar" if core.startswith("hil") else "basal"


def _side_of(kind: str, text: str) -> str:
    """The side a side hit of alternative ``kind`` names."""
    if kind in BILATERAL_SIDE_KINDS:
        return "bilateral"
    if kind in ("abbr", "rl"):
        return "right" if text[0] in "Rr" else "left"
    return "right" if text.lower().startswith("right") else "left"


@functools.lru_cache(maxsize=1 << 15)
def analyse(text: str) -> Analysis:
    """Every lexicon hit in ``text`` and the caption's attributes (cached: the data pipeline
    analyses each caption once per process)."""
    findings = []
    low = text.lower()
    scan = _FINDING_RE.finditer(low) if len(low) == len(text) else _FINDING_RE_I.finditer(text)
    for m in scan:
        canon, _, replaceable = _FINDING_LEXICON[int(m.lastgroup[1:])]
        if canon is not None:
            surface = text[m.start():m.end()]
            findings.append(Token(m.start(), m.end(), surface, "finding", canon,
                                  is_plural_word(last_word(surface)), replaceable))
    sides = tuple(Token(m.start(), m.end(), m.group(), m.lastgroup,
                        _side_of(m.lastgroup, m.group())) for m in _SIDE_RE.finditer(text))
    zones = tuple(Token(m.start(), m.end(), m.group(), m.lastgroup,
                        _zone_of(m.lastgroup, m.group()),
                        m.lastgroup in ("lobe", "zone", "noun")
                        and last_word(m.group()) in SINGULAR) for m in _ZONE_RE.finditer(text))
    sizes = tuple(Token(m.start(), m.end(), m.group(), m.lastgroup,
                        _size_of(m.group(), m.lastgroup)) for m in _SIZE_RE.finditer(text))
    negs = tuple(Token(m.start(), m.end(), m.group(), m.lastgroup, None)
                 for m in _NEG_RE.finditer(text))
    bounds = tuple(m.start() for m in _CLAUSE_RE.finditer(text))
    primary = findings[0] if findings else None

    if any(t.kind in BILATERAL_SIDE_KINDS for t in sides):
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

    negated = bool(negation_cues_for(primary, negs, bounds)) if primary else bool(negs)
    return Analysis(text, tuple(findings), sides, zones, sizes, negs, bounds, primary, side,
                    zones[0].canon if zones else None, sizes[0].canon if sizes else None,
                    negated)


def negation_cues_for(f: Token, negs: tuple, bounds: tuple) -> list:
    """Cues that negate finding ``f``: before it (no, without, ...) or after it (is not, no
    longer, absent) in the same clause."""
    clause = bisect.bisect_right(bounds, f.start)
    return [c for c in negs if bisect.bisect_right(bounds, c.start) == clause
            and ((c.kind in PRECEDING_NEGATIONS and c.end <= f.start)
                 or (c.kind not in PRECEDING_NEGATIONS and c.start >= f.start))]


def primary_negation_cues(a: Analysis) -> list:
    """The cues that negate the caption's first finding."""
    return negation_cues_for(a.primary, a.negs, a.bounds) if a.primary else []


# ----------------------------------------------------------------------------------------------
# Attributes of a caption
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
    return analyse(caption).attrs


def caption_attribute_ids(caption: str) -> dict:
    """``parse_caption`` as schema indices (-1 unknown): finding_id, side_id, zone_id, size_id,
    negated (0/1); what ``schema.Example``'s per-region id arrays hold."""
    p = parse_caption(caption)
    return {"finding_id": schema.FINDINGS.index(p["finding"]) if p["finding"] else -1,
            "side_id": schema.side_id(p["side"]), "zone_id": schema.zone_id(p["zone"]),
            "size_id": schema.size_id(p["size"]), "negated": int(p["negated"])}

