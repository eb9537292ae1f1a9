"""The embedded default dataset: procedural chest radiographs with localized findings.

``SyntheticSource`` makes the training command work anywhere with no files. Every example is
derived from ``(seed, split, index)`` alone, so example ``i`` of a split is identical on every
call and every machine, and the train / validation / test index spaces are disjoint by
construction (``source``).

Three layers, each reusable on its own:

* the case (``anatomy``, ``findings``): ``sample_case(rng)`` -> ``Case``, the patient's anatomy
  and projection (``Anatomy``) and the list of ``Finding`` objects (canonical name, patient side,
  zone, size/severity and one or two rendered ``Lesion`` parts). Frequencies, the zone/side mix
  and sizes are derived from the reference figures in ``shared/reference``
  (``reference_figures.json``).
* the image (``chest``, ``render``): ``render_case(case, image_size)`` -> ``(image uint8 [H, W],
  boxes float32 [R, 4])``, a PA radiograph (patient's right on the image left) with one tight
  normalised xyxy box per region (``case_regions(case)``), measured on what was actually
  rendered.
* the text (``sentences``, ``text``): ``generate_text(case, rng)`` -> ``(report, captions)``, a
  MIMIC-style report with FINDINGS / IMPRESSION sections and one plain-wording caption per region
  (phrase tables in ``phrases.json``, words by meaning in ``vocabulary``).

Regions. A finding reported once may be drawn as several lesions: "small bilateral pleural
effusions" is one ``Finding`` (side 'bilateral') with a right and a left ``Lesion``; each lesion is
one region with its own box, its own side ('right' / 'left') and a caption naming that side
("small left pleural effusion"). Pulmonary edema is one bilateral region whose box spans both
perihilar regions; cardiomegaly is one region without side or zone (ids -1).

Coordinates. Rendering works in a *canonical* frame (u right on the image, v down, both in
[0, 1], midline u = 0.5, patient's right at u < 0.5) which the projection (rotation, scale, shift)
maps onto the image. Lesion geometry is sampled in the canonical frame; boxes are measured in
image space from each lesion's own rendered footprint.
"""

from rmc_jax.data.synthetic.anatomy import Anatomy, sample_anatomy
from rmc_jax.data.synthetic.findings import (BOX_STATS, FREQUENCY_TEMPERATURE, IU_MESH_TO_FINDING,
                                             IU_ROWS, NORMAL_FRACTION, Case, Finding, Lesion,
                                             Region, case_regions, finding_mix, sample_case)
from rmc_jax.data.synthetic.render import render_case
from rmc_jax.data.synthetic.source import (SPLIT_SIZES, SyntheticSource, example_rngs,
                                           make_example)
from rmc_jax.data.synthetic.text import generate_text
from rmc_jax.data.synthetic.vocabulary import (FINDING_TERMS, LABEL_NAMES, NEGATION_CUES,
                                               RENDERED_FINDINGS, SIZE_WORDS, ZONE_WORDS)

__all__ = [
    "RENDERED_FINDINGS", "LABEL_NAMES", "SPLIT_SIZES", "Anatomy", "Lesion", "Finding", "Case",
    "Region", "sample_anatomy", "sample_case", "case_regions", "render_case", "generate_text",
    "make_example", "SyntheticSource", "FINDING_TERMS", "NEGATION_CUES", "ZONE_WORDS",
    "SIZE_WORDS", "finding_mix", "example_rngs", "BOX_STATS", "IU_ROWS", "IU_MESH_TO_FINDING",
    "FREQUENCY_TEMPERATURE", "NORMAL_FRACTION",
]
