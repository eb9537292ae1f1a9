"""What the synthetic dataset can show and the words its text uses for it.

The word tables live in ``vocabulary.json``; they describe the generator's language so that tests
(and users) can check a report or caption against it.
"""

from __future__ import annotations

from rmc_jax.data.synthetic.tables import load_table

# The findings the renderer can draw (``schema.FINDINGS`` names), in the order a case lists them.
RENDERED_FINDINGS = ("nodule", "mass", "consolidation", "atelectasis", "pleural_effusion",
                     "pneumothorax", "cardiomegaly", "edema")
# Image-level labels of every example: one per rendered finding, and 'no_finding' for normals.
LABEL_NAMES = RENDERED_FINDINGS + ("no_finding",)

_WORDS = load_table("vocabulary")
# Words by which a report may name each finding (lower case substrings). Every positive sentence
# the generator writes for a finding contains at least one of them, and a sentence that negates
# or normalises something never contains a term of a finding that is present.
FINDING_TERMS = _WORDS["finding_terms"]
# A sentence that contains one of these words states an absence or a normal appearance.
NEGATION_CUES = _WORDS["negation_cues"]
# Plain radiology words per zone: captions always use one of these (with an explicit side word),
# so a caption perturber can find and swap them.
ZONE_WORDS = _WORDS["zone_words"]
# Size and severity words per size class.
SIZE_WORDS = _WORDS["size_words"]
