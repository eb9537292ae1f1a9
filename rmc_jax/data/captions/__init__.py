"""Region captions: what they say, and hard negatives that say something else.

* ``lexicon``: regular expressions over real report language and ``analyse``, which finds the
  finding, side, zone, size and negation of a caption; ``parse_caption`` /
  ``caption_attribute_ids`` give them in the vocabulary of ``rmc_jax.data.schema``.
* ``editing``: edits that keep the grammar (articles, capitals, plurals, the lingula for the
  left middle lobe) and ``mirror_sides``, every side swapped for a horizontally flipped image.
* ``perturb``: the five perturbations (laterality, zone, finding, negation, size), each changing
  one attribute of the described finding.
* ``negatives``: ``perturbations`` and ``hard_negatives``, the candidates whose parse changed in
  the attribute of their kind and in no other, for ``losses.negative_caption_loss``.

Pure Python, deterministic given the ``np.random.Generator`` passed in; the analysis of a caption
is cached, so the data pipeline can call this per example.
"""

from rmc_jax.data.captions.editing import mirror_sides
from rmc_jax.data.captions.lexicon import caption_attribute_ids, parse_caption
from rmc_jax.data.captions.negatives import HardNegative, hard_negatives, perturbations
from rmc_jax.data.captions.perturb import PERTURBATION_TYPES

__all__ = ["PERTURBATION_TYPES", "HardNegative", "caption_attribute_ids", "hard_negatives",
           "mirror_sides", "parse_caption", "perturbations"]
