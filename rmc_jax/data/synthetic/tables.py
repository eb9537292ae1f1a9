"""The data files of the synthetic dataset, each read once at import.

Beside this module: ``vocabulary.json`` (words by what they name), ``reference_figures.json``
(the IU X-ray rows and box percentiles that findings are drawn from) and ``phrases.json`` (the
phrase tables of reports and captions).
"""

from __future__ import annotations

import importlib.resources
import json


def _frozen(value):
    """JSON arrays as tuples (the tables are constants: hashed, concatenated, never changed);
    objects stay dicts in file order."""
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        return {key: _frozen(item) for key, item in value.items()}
    return value


def load_table(name: str) -> dict:
    """The tables of ``<name>.json`` in this package, arrays as tuples."""
    text = importlib.resources.files(__package__).joinpath(f"{name}.json").read_text("utf-8")
    return _frozen(json.loads(text))
