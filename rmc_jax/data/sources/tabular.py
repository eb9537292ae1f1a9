"""Shared helpers for the official CSV index files of the real datasets.

Stable API (other sources import it):

* ``require_dir(path, what)`` / ``require_file(path, what)``: the path or a SourceError naming it
  and ``what`` (the expected layout).
* ``find_file(directory, names, what)``: first existing candidate (e.g. ``x.csv`` / ``x.csv.gz``).
* ``read_csv(path, required=(...), what='')`` -> list[dict[str, str]]: ``.csv`` or ``.csv.gz``
  read by column name (as ``csv.DictReader`` would); header names are stripped of whitespace and
  a BOM; a missing required column raises SourceError naming the file, the missing and the found
  columns. ``iter_csv`` (same arguments) yields the rows one at a time for big files.
* ``parse_label(value, uncertain='ignore')`` -> (value: float, known: bool): CheXpert-style
  ``1``/``1.0`` present, ``0`` absent, ``-1`` uncertain, blank unknown.
* ``parse_float(value, default=nan)`` / ``parse_int``: numbers from CSV cells (blank -> default).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from typing import Iterable, Sequence

from rmc_jax.data.sources.base import SourceError

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")


def require_dir(path: str | os.PathLike, what: str = "") -> str:
    """``path`` when it is a directory, else SourceError naming it and the expected layout."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise SourceError(f"dataset directory not found: {path}"
                          + (f"; expected {what}" if what else ""))
    return path


def require_file(path: str | os.PathLike, what: str = "") -> str:
    """``path`` when it is a file, else SourceError naming it and what was expected there."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError(f"required file not found: {path}"
                          + (f"; expected {what}" if what else ""))
    return path


def find_file(directory: str | os.PathLike, names: Sequence[str], what: str = "") -> str:
    """The first of ``names`` that exists in ``directory``; SourceError listing all candidates."""
    directory = os.fspath(directory)
    for name in names:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    tried = ", ".join(os.path.join(directory, name) for name in names)
    raise SourceError(f"required file not found: tried {tried}"
                      + (f"; expected {what}" if what else ""))


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, "r", encoding="utf-8-sig", newline="")


def read_header(path: str | os.PathLike) -> list[str]:
    """Column names of a CSV (stripped)."""
    path = require_file(path, "a CSV file")
    with _open_text(path) as handle:
        row = next(csv.reader(handle), [])
    return [name.strip() for name in row]


def iter_csv(path: str | os.PathLike, required: Iterable[str] = (), what: str = ""):
    """Rows of a ``.csv`` / ``.csv.gz`` file one at a time (for the big index files).

    Same checks and row format as ``read_csv``; the file and header are checked when the
    generator is first advanced.
    """
    path = require_file(path, what or "a CSV file")
    required = tuple(required)
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise SourceError(f"{path}: empty CSV file, expected a header with columns "
                                  f"{list(required)}" + (f"; expected {what}" if what else ""))
            header = [name.strip() for name in header]
            missing = [name for name in required if name not in header]
            if missing:
                raise SourceError(f"{path}: missing required column(s) {missing}; found columns "
                                  f"{header}" + (f"; expected {what}" if what else ""))
            width = len(header)
            for cells in reader:
                if not cells or all(not cell.strip() for cell in cells):
                    continue
                if len(cells) != width:
                    cells = list(cells[:width]) + [""] * (width - len(cells))
                yield dict(zip(header, cells))
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as error:
        raise SourceError(f"{path}: cannot read CSV file: {error}") from error


def read_csv(path: str | os.PathLike, required: Iterable[str] = (), what: str = "") -> list[dict]:
    """All rows of a ``.csv`` / ``.csv.gz`` file as dicts keyed by (stripped) column name.

    Missing cells are '' (never None); extra cells beyond the header are dropped; blank lines are
    skipped. Raises SourceError when the file is missing, unreadable or lacks one of the
    ``required`` columns (naming the file, the missing columns, the columns found and ``what``).
    """
    return list(iter_csv(path, required, what))


def parse_label(value, uncertain: str = "ignore") -> tuple[float, bool]:
    """CheXpert-style label cell -> (value, known).

    '1', '1.0' -> (1, True); '0', '0.0' -> (0, True); blank/'nan' -> (0, False);
    '-1', '-1.0' (uncertain) -> 'ignore': (0, False), 'zeros': (0, True), 'ones': (1, True).
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    text = "" if value is None else str(value).strip()
    if not text or text.lower() in ("nan", "none", "null"):
        return 0.0, False
    try:
        number = float(text)
    except ValueError as error:
        raise ValueError(f"not a CheXpert label value (1, 0, -1 or blank): {value!r}") from error
    if math.isnan(number):
        return 0.0, False
    if number == -1.0:
        if uncertain == "zeros":
            return 0.0, True
        if uncertain == "ones":
            return 1.0, True
        return 0.0, False
    if number == 1.0:
        return 1.0, True
    if number == 0.0:
        return 0.0, True
    raise ValueError(f"not a CheXpert label value (1, 0, -1 or blank): {value!r}")


def parse_float(value, default: float = math.nan) -> float:
    """A CSV cell as float; blank/'nan' -> ``default``; ValueError on garbage."""
    text = "" if value is None else str(value).strip()
    if not text:
        return default
    number = float(text)
    return default if math.isnan(number) else number


def parse_int(value, default: int | None = None) -> int | None:
    """A CSV cell as int ('12', '12.0'); blank -> ``default``."""
    number = parse_float(value, math.nan)
    if math.isnan(number):
        return default
    return int(round(number))
