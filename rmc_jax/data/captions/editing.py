"""Edits of a caption that keep its grammar, and the horizontal-flip mirror of its sides.

An edit is (start, end, replacement) on the text ``analyse`` read. ``apply_edits`` applies
non-overlapping edits, fixing a/an in front of a replacement, the capital of a sentence opener
and ALL-CAPS text; the helpers give a replacement the case of what it replaces and turn a zone
phrase singular or plural. ``mirror_sides`` swaps every patient side of a text, as a horizontal
flip of its image requires (``rmc_jax.data.transforms``).
"""

from __future__ import annotations

import re
from typing import Iterable

from rmc_jax.data.captions.lexicon import (PLURAL, SINGULAR, WORD_SPLIT_RE, Analysis, Token,
                                           analyse, is_plural_word)

OTHER_SIDE = {"right": "left", "left": "right"}
_ARTICLE_TAIL_RE = re.compile(r"\b(an?)(\s+)$", re.IGNORECASE)
_SPACES_RE = re.compile(r"\s+")
_SPACE_PUNCT_RE = re.compile(r"\s+([,.;:!?])")
_DANGLING_COMMA_RE = re.compile(r",\s*([,.;:!?]|$)")
_LEADING_PUNCT_RE = re.compile(r"^[\s,;:]+")
_NEXT_WORD_RE = re.compile(r"\s*([\w-]*)")
_LAST_WORD_RE = re.compile(r"(.*?)([A-Za-z]+)$", re.S)
_SIDE_WORD_RE = re.compile(r"\b(?:right|left)\b", re.IGNORECASE)
# Words after a zone phrase that make it a modifier ("lingular opacity") rather than a noun.
_DESCRIPTOR_WORDS = frozenset({"airspace", "air-space", "patchy", "hazy", "focal", "streaky",
                               "segment", "region", "linear", "ill-defined", "subsegmental"})


def case_like(src: str, repl: str) -> str:
    """Give ``repl`` the capitalisation of ``src``'s first letter. An acronym ("PICC line",
    "RLL") says nothing about the case of what replaces it; ALL-CAPS captions and sentence
    openers are handled by ``apply_edits``."""
    if not repl or not src or not src[0].isupper():
        return repl
    first = WORD_SPLIT_RE.split(src, 1)[0]
    if len(first) > 1 and first.isupper():
        return repl
    return repl[0].upper() + repl[1:]


def sentence_start(text: str, pos: int) -> bool:
    """Whether ``pos`` opens a sentence (only spaces since the text's start or a full stop)."""
    before = text[:pos].rstrip()
    return not before or before[-1] in ".!?;:\n"


def apply_edits(text: str, edits: Iterable[tuple]) -> str | None:
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
        elif repl and text[start:start + 1].isupper() and sentence_start(text, start):
            repl = repl[0].upper() + repl[1:]
        if repl:
            prefix = "".join(out)
            m = _ARTICLE_TAIL_RE.search(prefix)
            if m:
                article = "an" if repl[0].lower() in "aeiou" else "a"
                out = [prefix[:m.start()] + case_like(m.group(1), article) + m.group(2)]
            push(repl)
        elif sentence_start(text, start) and text[start:end][:1].isupper():
            cap = True
        pos = end
    push(text[pos:])
    return tidy("".join(out))


def tidy(text: str) -> str:
    """Single spaces, no space before punctuation, no dangling comma or leading punctuation."""
    text = _SPACE_PUNCT_RE.sub(r"\1", _SPACES_RE.sub(" ", text))
    return _LEADING_PUNCT_RE.sub("", _DANGLING_COMMA_RE.sub(r"\1", text)).strip()


def normalise(text: str) -> str:
    """Lower case with single spaces: two captions equal under it say the same."""
    return " ".join(text.lower().split())


def singular_last(text: str) -> str:
    """``text`` with its last word singular ("both lung bases" -> "both lung base")."""
    head, word = _LAST_WORD_RE.match(text).groups()
    low = word.lower()
    if low in SINGULAR:
        new = SINGULAR[low]
    elif low.endswith("thoraces"):
        new = low[:-3] + "x"
    elif low.endswith("ies"):
        new = low[:-3] + "y"
    elif low.endswith("sses"):
        new = low[:-2]
    elif is_plural_word(low):
        new = low[:-1]
    else:
        return text
    return head + case_like(word, new)


def plural_last(text: str) -> str:
    """``text`` with its last word plural ("pleural effusion" -> "pleural effusions")."""
    head, word = _LAST_WORD_RE.match(text).groups()
    low = word.lower()
    if low in PLURAL:
        new = PLURAL[low]
    elif low.endswith("thorax"):
        new = low[:-1] + "ces"
    elif low.endswith("y"):
        new = low[:-1] + "ies"
    elif low.endswith("ss"):
        new = low + "es"
    else:
        new = low + "s"
    return head + case_like(word, new)


def _next_word(text: str, pos: int) -> tuple[int, str]:
    """(start, lower-case word) of the word at or after ``pos``."""
    m = _NEXT_WORD_RE.match(text, pos)
    return m.start(1), m.group(1).lower()


def modifier_position(a: Analysis, end: int) -> bool:
    """True when the zone phrase ending at ``end`` modifies a following finding ("lingular
    opacity"), False when it is a noun ("in the lingula")."""
    start, word = _next_word(a.text, end)
    return word in _DESCRIPTOR_WORDS or any(f.start == start for f in a.findings)


def zone_for_side(a: Analysis, z: Token, side: str, singular: bool) -> str | None:
    """Replacement for a zone phrase once the finding moves to ``side`` (None: unchanged)."""
    text = z.text
    if z.kind == "lobe" and z.canon == "middle" and side == "left":
        return case_like(text, "lingular" if modifier_position(a, z.end) else "lingula")
    if z.kind == "lingula" and side == "right":
        return case_like(text, "middle lobe" if a.sides else "right middle lobe")
    if singular and z.plural:
        return singular_last(text)
    return None




def _matching_case(source: str, word: str) -> str:
    """``word`` in the case of ``source``: all capitals, capitalised or lower case."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    return word[:1].upper() + word[1:] if source[:1].isupper() else word


def mirror_sides(text: str) -> str:
    """A caption or report as said of the horizontally flipped image: every patient side swapped.

    What it recognises as a side is what the laterality perturbation changes (the lexicon's side
    vocabulary): right <-> left word by word, keeping case ("Right" -> "Left", "RIGHT" ->
    "LEFT") and forms such as "-sided" and "left greater than right"; "R"/"L" only where followed
    by anatomy ("R lower lobe"); lobe abbreviations (RLL <-> LLL, RUL <-> LUL); the right middle
    lobe <-> the lingula (the left lung has no middle lobe). Bilateral words ("bilateral", "both
    bases", "bibasilar") and non-lateral uses ("left in place") are unchanged; all other
    characters are kept as they are.
    """
    if not text:
        return text
    analysis = analyse(text)
    all_caps = text.isupper() and sum(c.isalpha() for c in text) >= 4
    edits = []
    for token in analysis.sides:
        if token.kind in ("side", "comp", "rland"):
            for m in _SIDE_WORD_RE.finditer(token.text):
                edits.append((token.start + m.start(), token.start + m.end(),
                              _matching_case(m.group(), OTHER_SIDE[m.group().lower()])))
        elif token.kind == "rl":
            edits.append((token.start, token.end, "L" if token.text == "R" else "R"))
        elif token.kind == "abbr":
            flipped = ("L" if token.text[0] == "R" else "R") + token.text[1:]
            if flipped == "LML":  # RML: the left lung's counterpart is the lingula
                flipped = "lingular" if modifier_position(analysis, token.end) else "lingula"
            edits.append((token.start, token.end, flipped))
    for zone in analysis.zones:
        if zone.kind == "lobe" and zone.canon == "middle" and not zone.plural:
            new_side = "left"   # the (right) middle lobe -> the lingula
        elif zone.kind == "lingula":
            new_side = "right"  # the lingula -> the right middle lobe
        else:
            continue
        replacement = zone_for_side(analysis, zone, new_side, False)
        if replacement is not None:
            edits.append((zone.start, zone.end, replacement))
    out, position = [], 0
    for start, end, replacement in sorted(edits):
        if all_caps:
            replacement = replacement.upper()
        elif (text[start].isupper() and replacement[:1].islower()
              and sentence_start(text, start)):
            replacement = replacement[0].upper() + replacement[1:]  # sentence opener
        out += [text[position:start], replacement]
        position = end
    out.append(text[position:])
    return "".join(out)
