"""What every source provides, the errors it raises on a bad dataset copy, and how it reports the
repairs it makes while reading one.

Three kinds of bad data, three channels:

* ``SourceError`` at construction: the copy cannot be read as the format it claims to be (a file
  or column missing, a cell that is not of its column's form). The message names the file, the
  line and column where there is one, and the form that was expected. Nothing is trained on a
  copy that is misread.
* ``ExampleError`` (a SourceError) from ``src[i]``: this one example cannot be read (an empty
  or truncated scene graph, a corrupt record of a prepared copy, a report that is not UTF-8,
  ...); the message names the file (or shard and record index) and what was wrong.
  Unreadable image files raise ``images.ImageDecodeError`` and missing ones
  ``FileNotFoundError``, also naming the file. The pipeline skips and counts any exception
  from ``src[i]``; the class says what happened, callers need not filter on it.
* ``EmptySplitError`` (a SourceError) from ``open_source``: the split asked for has no
  examples; names the dataset, the split and the splits the copy holds (``split_sizes``).
* ``SourceWarning`` at construction (or once per example where a repair needs the image): a
  repair that leaves the rest of the copy usable (a box outside the image dropped, a duplicate
  row ignored, ...). Each warning carries the count and the file:line of every repair of its
  kind (``warn_places``), so nothing is dropped or rewritten without a word.
"""

from __future__ import annotations

import abc
import warnings
from typing import Sequence

from rmc_jax.data.schema import Example


class SourceError(ValueError):
    """A dataset copy that cannot be read: names the path and the layout that was expected."""


class ExampleError(SourceError):
    """One example that cannot be read (the rest of the copy can): names the file, or the
    shard and record index, and what was wrong with it."""


class EmptySplitError(SourceError):
    """The split asked for has no examples (a typo in a split column, a filter that keeps
    nothing); names the dataset, the split and the splits the copy holds."""


class SourceWarning(UserWarning):
    """A repair made while reading a dataset copy (a dropped box, an ignored duplicate row)."""


def warn_places(message: str, places: Sequence[str], limit: int = 10) -> None:
    """One SourceWarning for all repairs of one kind, e.g. ``warn_places('dropped {count}
    box(es)', ['a.csv:4 (inverted)', 'a.csv:9 (outside the image)'])`` -> 'dropped 2 box(es):
    a.csv:4 (inverted), a.csv:9 (outside the image)'. ``{count}`` in ``message`` is
    ``len(places)``; the first ``limit`` places are listed. Nothing is emitted for no places."""
    if not places:
        return
    shown = ", ".join(places[:limit])
    if len(places) > limit:
        shown += f", ... ({len(places) - limit} more)"
    warnings.warn(f"{message.format(count=len(places))}: {shown}", SourceWarning, stacklevel=3)


class Source(abc.ABC):
    """Random-access view of one dataset split as Examples.

    Subclasses parse the index files in ``__init__`` (failing early with SourceError, warning
    about repairs) and decode images lazily in ``__getitem__``. ``texts(i)`` gives example i's
    ``(report, captions)`` without decoding its image, for building a tokenizer from a corpus:
    it equals ``(src[i].report, src[i].captions)`` whenever ``src[i]`` can be read, and an
    image file that is missing or corrupt does not make it fail (a broken text file, such as a
    scene graph or a report, does). Sources whose captions depend on the image's size read
    only its header (VinDr-CXR, Chest ImaGenome); without one they describe the regions
    without it.
    """

    name: str = ""
    label_names: Sequence[str] = ()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Example: ...

    @abc.abstractmethod
    def texts(self, index: int) -> tuple[str, tuple[str, ...]]:
        """(report, captions) of example ``index`` without decoding its image."""

    def split_sizes(self) -> dict[str, int] | None:
        """Examples (or index rows) per split name the copy holds, for the message of an empty
        split; None where the source cannot tell."""
        return None

    def _position(self, index: int) -> int:
        """``index`` (negative counts from the end) as a position in [0, len), or IndexError."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return index % len(self)
