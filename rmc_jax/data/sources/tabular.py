"""Shared helpers for the official CSV index files of the real datasets.

Stable API (other sources import it):

* ``require_dir(path, what)`` / ``require_file(path, what)``: the path or a SourceError naming it
  and ``what`` (the expected layout).
* ``find_file(directory, names, what)``: first existing candidate (e.g. ``x.csv`` / ``x.csv.gz``).
* ``read_csv(path, required=(...), what='')`` -> list[Row]: ``.csv`` or ``.csv.gz`` read by
  column name (as ``csv.DictReader`` would); header names are stripped of whitespace and a BOM;
  a missing required column raises SourceError naming the file, the missing and the found
  columns. ``iter_csv`` (same arguments) yields the rows one at a time for big files. A ``Row``
  is a dict that also knows where it is: ``row.place`` = 'file.csv:LINE'.
* ``cell_float(row, column, ...)`` / ``cell_int`` / ``cell_label``: a cell as a number or a
  CheXpert-style label; anything else is a SourceError naming file:line, column, value and the
  form expected.
* ``parse_label(value, uncertain='ignore')`` -> (value: float, known: bool): CheXpert-style
  ``1``/``1.0`` present, ``0`` absent, ``-1`` uncertain, blank unknown.
* ``clean_id(value)``: an id cell as text, '10000032.0' -> '10000032'.
* ``Repeats``: the first row of each key is used, later ones are collected (duplicate or
  conflicting) for one counted warning naming their lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from typing import Iterable, Sequence

from rmc_jax.data.sources.base import SourceError, warn_places

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


class Row(dict):
    """One CSV row keyed by column name; ``line`` is its first line in the file (the header is
    line 1) and ``place`` 'file.csv:LINE', for messages."""

    def __init__(self, cells, path: str, line: int):
        super().__init__(cells)
        self.line, self.place = line, f"{path}:{line}"


def csv_records(reader):
    """(first line, cells) of each record of a ``csv.reader``, blank lines skipped (a quoted
    cell may span lines, so the line is counted by the reader, not by the record)."""
    line = reader.line_num
    for cells in reader:
        start, line = line + 1, reader.line_num
        if cells and any(cell.strip() for cell in cells):
            yield start, cells


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
            for line, cells in csv_records(reader):
                if len(cells) != width:
                    cells = list(cells[:width]) + [""] * (width - len(cells))
                yield Row(zip(header, cells), path, line)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as error:
        raise SourceError(f"{path}: cannot read CSV file: {error}") from error


def read_csv(path: str | os.PathLike, required: Iterable[str] = (), what: str = "") -> list[Row]:
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


def cell_float(row: Row, column: str, default: float = math.nan,
               expected: str = "a number") -> float:
    """Cell ``column`` of ``row`` as a finite float, ``default`` when blank (or 'nan', as pandas
    writes a missing value); text or 'inf' raise SourceError naming file:line, the column, the
    value and ``expected``."""
    text = str(row.get(column) or "").strip()
    if not text or text.lower() == "nan":
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise SourceError(f"{row.place}: column {column!r} is {row[column]!r}; expected "
                          f"{expected}")
    return number


def cell_int(row: Row, column: str, default: int | None = None,
             expected: str = "a whole number") -> int | None:
    """Cell ``column`` as an int ('12', '12.0'), ``default`` when blank; anything else (text,
    '2.5') raises SourceError naming file:line and the column."""
    number = cell_float(row, column, math.nan, expected)
    if math.isnan(number):
        return default
    if number != int(number):
        raise SourceError(f"{row.place}: column {column!r} is {row[column]!r}; expected "
                          f"{expected}")
    return int(number)


def cell_label(row: Row, column: str, uncertain: str = "ignore") -> tuple[float, bool]:
    """``parse_label`` of cell ``column``, a bad value named by file:line and column."""
    try:
        return parse_label(row.get(column), uncertain)
    except ValueError as error:
        raise SourceError(f"{row.place}: column {column!r}: {error}") from error


def clean_id(value) -> str:
    """An id as text: '10000032' / '10000032.0' / 10000032 -> '10000032'; None -> ''; other
    text is returned stripped."""
    text = "" if value is None else str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number == int(number) else text


class Repeats:
    """Rows whose key was seen before: the first row of a key is the one used.

    ``first(key, row, content)`` is True for the first row of ``key``; a later one is recorded
    as '<file:line> (repeats line N)' or, when its ``content`` differs from the first row's,
    '<file:line> (conflicts with line N)', naming the key as ``what`` when given ('study
    50414267 conflicts with line 2'). ``warn(message)`` emits one counted warning
    (``base.warn_places``) naming them all.
    """

    def __init__(self, what: str = ""):
        self.what = what
        self._first: dict = {}
        self.places: list[str] = []

    def first(self, key, row: Row, content=None) -> bool:
        if key not in self._first:
            self._first[key] = (row.line, content)
            return True
        line, seen = self._first[key]
        how = "repeats" if content == seen else "conflicts with"
        name = f"{self.what} {key} " if self.what else ""
        self.places.append(f"{row.place} ({name}{how} line {line})")
        return False

    def warn(self, message: str) -> None:
        warn_places(message + "; the first row of each is used", self.places)
