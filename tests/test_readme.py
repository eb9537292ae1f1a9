"""The README's code examples run as written."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks():
    text = open(README).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_losses_examples_run():
    blocks = python_blocks()
    namespace = {}
    exec(blocks[0], namespace)  # the losses in someone's own jax.jit
    assert np.isfinite(float(namespace["total"])) and set(namespace["logs"]) == {
        "global", "roi", "neg", "total"}
    assert namespace["grads"].shape == (32, 128)
    exec(blocks[1], namespace)  # the same loss sharded over the devices with the ring backend
    import rmc_jax.losses as L
    np.testing.assert_allclose(namespace["loss"], L.global_contrastive_loss(
        namespace["img"], namespace["txt"], 0.07), rtol=1e-5)
