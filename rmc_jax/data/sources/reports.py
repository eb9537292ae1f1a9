"""Shared report-text helpers: sectioning free-text radiology reports (MIMIC-CXR style).

A MIMIC-CXR report looks like::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)
     INDICATION:  ___ with cough
     COMPARISON:  None.
     FINDINGS:
     The lungs are clear.  No pleural effusion.
     IMPRESSION:
     No acute cardiopulmonary process.

Section headers are upper-case words followed by a colon at the start of a line (any indentation)
or, for the well-known headers (FINDINGS, IMPRESSION, INDICATION, ...), anywhere after a space;
'Findings:' / 'Impression:' in title case are accepted at the start of a line. Sections may be
missing, repeated (their texts are joined) or in any order.

API:
* ``clean_text(text)``: whitespace collapsed to single spaces.
* ``split_sections(text) -> dict[name, text]``: names normalised (lower case, single spaces;
  'conclusion(s)'/'impressions' -> 'impression', 'finding'/'findings and impression' ->
  'findings'); the text before the first header is under ''.
* ``findings_impression(text) -> (findings, impression)``.
* ``report_text(text, fallback='last')``: findings + impression; when both are missing,
  ``fallback='last'`` gives the last non-administrative section (as the official MIMIC-CXR
  sectioning does), 'none' gives ''.
* ``sectioned_text(findings, impression)`` / ``study_text(text)``: what sources put in
  ``Example.report``: 'FINDINGS: ...\nIMPRESSION: ...' (the sections present), so that the
  pipeline can still choose and order them; a report without either is ``report_text``'s
  fallback, unlabelled.
* ``model_text(text, sections)``: the text the text tower reads: 'findings_impression',
  'impression_findings' (impression first, so a length limit cuts findings, not the summary),
  'impression' (CheXzero) or 'full'; a report without section headers is used whole.
* ``read_report(path)``: a report file's text (UTF-8; anything else is an ExampleError).
* ``parse_side``, ``parse_zone``, ``parse_size``: region attributes named in a phrase.
"""

from __future__ import annotations

import os
import re

from rmc_jax.data.sources.base import ExampleError

_KNOWN_HEADERS = (
    "FINDINGS AND IMPRESSION", "FINDINGS", "FINDING", "IMPRESSIONS", "IMPRESSION",
    "CONCLUSIONS", "CONCLUSION", "INDICATION", "INDICATIONS", "COMPARISON", "COMPARISONS",
    "TECHNIQUE", "EXAMINATION", "EXAM", "CLINICAL HISTORY", "HISTORY", "CLINICAL INFORMATION",
    "REASON FOR EXAMINATION", "REASON FOR EXAM", "NOTIFICATION", "RECOMMENDATION(S)",
    "RECOMMENDATIONS", "RECOMMENDATION", "WET READ", "PROCEDURE", "TYPE OF EXAMINATION",
)
_HEADER = re.compile(
    r"(?:^[ \t]*(?P<line>[A-Z][A-Z0-9 /&(),\-]{1,60}?)"        # upper-case header, line start
    r"|^[ \t]*(?P<title>(?i:findings|impressions?|conclusions?))"  # title case, line start
    r"|(?<![A-Za-z])(?P<inline>" + "|".join(re.escape(h) for h in _KNOWN_HEADERS) + r"))"
    r"[ \t]*:",
    re.MULTILINE,
)
_SYNONYMS = {
    "finding": "findings",
    "findings and impression": "findings",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
}
# Sections that never hold the description of the image (skipped by the 'last' fallback).
_ADMINISTRATIVE = {
    "", "examination", "exam", "indication", "indications", "comparison", "comparisons",
    "technique", "history", "clinical history", "clinical information", "reason for examination",
    "reason for exam", "notification", "wet read", "procedure", "type of examination",
    "recommendation(s)", "recommendations", "recommendation",
}


def clean_text(text: str) -> str:
    """Collapse all whitespace runs (newlines, tabs, double spaces) to one space."""
    return re.sub(r"\s+", " ", text or "").strip()


def _normalise_header(name: str) -> str:
    name = re.sub(r"\s+", " ", name.strip().lower())
    return _SYNONYMS.get(name, name)


def split_sections(text: str) -> dict[str, str]:
    """Report text -> {section name: cleaned text}; the preamble is under ''."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    sections: dict[str, list[str]] = {}
    name, start = "", 0
    for match in _HEADER.finditer(text):
        sections.setdefault(name, []).append(text[start:match.start()])
        header = match.group("line") or match.group("title") or match.group("inline")
        name, start = _normalise_header(header), match.end()
    sections.setdefault(name, []).append(text[start:])
    result = {}
    for key, parts in sections.items():
        body = clean_text(" ".join(parts))
        if key == "":
            body = clean_text(re.sub(r"\bFINAL REPORT\b", " ", body))
        if body or key:
            result[key] = body
    return result


def findings_impression(text: str) -> tuple[str, str]:
    """(findings, impression) of a report; '' for a missing section."""
    sections = split_sections(text)
    return sections.get("findings", ""), sections.get("impression", "")


def report_text(text: str, fallback: str = "last") -> str:
    """Findings and impression joined by a space (``model_text``'s default choice).

    When the report has neither section, ``fallback='last'`` returns the last section that is not
    administrative (indication, comparison, technique, ...), possibly the unlabelled preamble;
    ``fallback='none'`` returns ''.
    """
    if fallback not in ("last", "none"):
        raise ValueError(f"fallback must be 'last' or 'none', got {fallback!r}")
    sections = split_sections(text)
    findings, impression = sections.get("findings", ""), sections.get("impression", "")
    if findings or impression:
        return " ".join(part for part in (findings, impression) if part)
    return "" if fallback == "none" else _last_description(sections)


def _last_description(sections: dict[str, str]) -> str:
    """A report without findings and impression: its whole text when it has no headers, else
    its last non-administrative section ('' if none)."""
    if list(sections) == [""]:
        return sections[""]
    for name in reversed(list(sections)):
        if name not in _ADMINISTRATIVE and sections[name]:
            return sections[name]
    return ""


def sectioned_text(findings: str, impression: str) -> str:
    """'FINDINGS: f\nIMPRESSION: i' with the sections that are not empty ('' if neither)."""
    bodies = (("FINDINGS", clean_text(findings)), ("IMPRESSION", clean_text(impression)))
    return "\n".join(f"{name}: {body}" for name, body in bodies if body)


def study_text(text: str) -> str:
    """A free-text report as ``Example.report``: its findings and impression under their
    headers (``sectioned_text``); without either, ``report_text``'s fallback section."""
    sections = split_sections(text)
    return (sectioned_text(sections.get("findings", ""), sections.get("impression", ""))
            or _last_description(sections))


REPORT_SECTIONS = ("findings_impression", "impression_findings", "impression", "full")


def model_text(text: str, sections: str = "findings_impression") -> str:
    """The part of a report the text tower reads, whitespace collapsed.

    'findings_impression' and 'impression_findings' join the two sections in that order,
    'impression' keeps the impression alone (as CheXzero trains), 'full' keeps every section
    with its header. When the chosen sections are missing the report falls back as in
    ``report_text``; text without section headers (sources that already give findings +
    impression) is returned whole.
    """
    if sections not in REPORT_SECTIONS:
        raise ValueError(f"report sections {sections!r}; expected one of {REPORT_SECTIONS}")
    if sections == "full":
        return clean_text(text)
    parts = split_sections(text)
    findings, impression = parts.get("findings", ""), parts.get("impression", "")
    chosen = {"findings_impression": (findings, impression),
              "impression_findings": (impression, findings),
              "impression": (impression or findings,)}[sections]
    return " ".join(part for part in chosen if part) or _last_description(parts)


# A sentence ends at a full stop before white space, except a list number's ("1. ", "2. ");
# decimals ("2.8 cm") have no space after the stop. Line breaks end sentences too.
_SENTENCE_END = re.compile(r"(?<!\b\d)\.\s+|\n+")
_LIST_NUMBER = re.compile(r"^\d+\.\s*")
_SENTENCE_HEADER = re.compile(r"^[A-Z][A-Z /]*:\s*")


def report_sentences(text: str) -> list[str]:
    """The sentences of report text, in order, without list numbers, section headers and the
    final full stop: '1. Small left effusion. 2. No pneumothorax.' -> ['Small left effusion',
    'No pneumothorax']."""
    sentences = []
    for part in _SENTENCE_END.split(text):
        part = _LIST_NUMBER.sub("", _SENTENCE_HEADER.sub("", part.strip())).rstrip(". ").strip()
        if part:
            sentences.append(part)
    return sentences


def read_report(path: str | os.PathLike) -> str:
    """The raw text of a UTF-8 report file; ExampleError naming the file and the first bad byte
    when it is not UTF-8 (binary garbage or another encoding is never read as a report)."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ExampleError(f"report {os.fspath(path)} is not UTF-8 text (byte "
                           f"{data[error.start:error.start + 1]!r} at offset {error.start})"
                           ) from error


# ----------------------------------------------------------------------------------------------
# Region attributes named in a phrase (MS-CXR label_text, generated captions).
# ----------------------------------------------------------------------------------------------

def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", (text or "").lower()))


def parse_side(text: str) -> str:
    """'right' / 'left' / 'bilateral' (the patient's side as the phrase states it) or ''."""
    words = _words(text)
    if words & {"bilateral", "bilaterally", "both", "bibasilar", "bibasal", "biapical"}:
        return "bilateral"
    right, left = bool(words & {"right", "rt"}), bool(words & {"left", "lt"})
    if right and left:
        return "bilateral"
    return "right" if right else "left" if left else ""


_ZONE_WORDS = (
    ("retrocardiac", {"retrocardiac"}),
    ("perihilar", {"perihilar", "hilar", "parahilar"}),
    ("apical", {"apical", "apex", "apices", "biapical"}),
    ("basal", {"basal", "base", "bases", "basilar", "bibasilar", "bibasal"}),
    ("upper", {"upper"}),
    ("middle", {"middle", "mid", "lingula", "lingular"}),
    ("lower", {"lower"}),
    ("diffuse", {"diffuse", "diffusely", "widespread"}),
)


def parse_zone(text: str) -> str:
    """The first lung zone a phrase names (see schema.ZONES) or ''."""
    words = _words(text)
    for zone, vocabulary in _ZONE_WORDS:
        if words & vocabulary:
            return zone
    return ""


def parse_size(text: str) -> str:
    """'small' / 'moderate' / 'large' from size or severity words (mild -> small) or ''."""
    words = _words(text)
    if words & {"large", "severe", "extensive", "massive"}:
        return "large"
    if words & {"moderate", "moderately"}:
        return "moderate"
    if words & {"small", "mild", "minimal", "tiny", "trace", "mildly"}:
        return "small"
    return ""
