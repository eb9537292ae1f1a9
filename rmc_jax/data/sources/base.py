"""What every source provides, and the error it raises on a bad dataset copy."""

from __future__ import annotations

import abc
from typing import Sequence

from rmc_jax.data.schema import Example


class SourceError(ValueError):
    """A dataset copy that cannot be read: names the path and the layout that was expected."""


class Source(abc.ABC):
    """Random-access view of one dataset split as Examples.

    Subclasses parse the index files in ``__init__`` (failing early with SourceError) and
    decode images lazily in ``__getitem__``. ``texts(i)`` gives example i's ``(report,
    captions)`` without decoding its image, for building a tokenizer from a corpus: it equals
    ``(src[i].report, src[i].captions)`` whenever ``src[i]`` can be read, and an image file
    that is missing or corrupt does not make it fail (a broken text file, such as a scene graph
    or a report, does). Sources whose captions depend on the image's size read only its header
    (VinDr-CXR, Chest ImaGenome); without one they describe the regions without it.
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

    def _position(self, index: int) -> int:
        """``index`` (negative counts from the end) as a position in [0, len), or IndexError."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return index % len(self)
