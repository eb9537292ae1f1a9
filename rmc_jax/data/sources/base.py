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
    decode images lazily in ``__getitem__``.
    """

    name: str = ""
    label_names: Sequence[str] = ()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Example: ...

    def _position(self, index: int) -> int:
        """``index`` (negative counts from the end) as a position in [0, len), or IndexError."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return index % len(self)
