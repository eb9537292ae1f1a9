"""Hard negative captions: perturbed captions checked to no longer describe the region.

The negative-caption loss (``rmc_jax.losses.negative_caption_loss``) asks the model to prefer a
region's true caption over K perturbed versions of it. ``perturbations`` and ``hard_negatives``
draw them from ``perturb.GENERATORS`` and keep a candidate only when the lexicon's parse of it
differs from the caption's in the attribute of its kind and in no other (a negation may also
drop the size). A kind that does not apply is skipped, never faked.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rmc_jax.data.captions.editing import normalise
from rmc_jax.data.captions.lexicon import analyse
from rmc_jax.data.captions.perturb import GENERATORS, PERTURBATION_TYPES

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


def _changes_only_its_attribute(kind: str, before: dict, after: dict) -> bool:
    """The negative changes the attribute of its kind and nothing else (a negation may drop the
    size: "no small pneumothorax" is not what "no pneumothorax" means)."""
    changed = {k for k in _ATTRIBUTES if before[k] != after[k]}
    attr = _ATTRIBUTE_OF_KIND[kind]
    if kind == "negation" and changed == {"negated", "size"}:
        return after["size"] is None
    # a vaguer caption ("pleural effusion" for "bilateral pleural effusions") is not a negative
    return changed == {attr} and after[attr] is not None


class _CandidatePool:
    """Candidate negatives of one caption per kind, checked lazily (only those handed out are
    parsed again) and deduplicated in the order they are taken."""

    def __init__(self, caption: str, rng: np.random.Generator, kinds: Sequence[str]):
        unknown = [k for k in kinds if k not in GENERATORS]
        if unknown:
            raise ValueError(f"unknown perturbation kinds {unknown}; expected a subset of "
                             f"{PERTURBATION_TYPES}")
        a = analyse(caption)
        self._before = a.attrs
        self._seen = {normalise(caption)}
        self._candidates = {kind: GENERATORS[kind](a, rng) for kind in kinds}
        self._next = dict.fromkeys(kinds, 0)

    def take(self, kind: str) -> str | None:
        """The next valid, unseen negative of ``kind``; None when the kind is exhausted."""
        candidates = self._candidates[kind]
        while self._next[kind] < len(candidates):
            text = candidates[self._next[kind]]
            self._next[kind] += 1
            if not text or normalise(text) in self._seen:
                continue
            if _changes_only_its_attribute(kind, self._before, analyse(text).attrs):
                self._seen.add(normalise(text))
                return text
        return None


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
    pool = _CandidatePool(caption, rng, kinds)
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
    pool = _CandidatePool(caption, rng, kinds)
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
